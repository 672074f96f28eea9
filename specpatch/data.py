# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Audio classification data for the training scripts: hub / local datasets, label maps, worker-side decoding, sampling.

The pipeline splits the work the way AST-style training needs it on any number of processes:

1. [`load_audio_dataset`] calls `datasets.load_dataset` on a hub id (`agkphysics/AudioSet`, `ashraq/esc50`, ...), a local
   folder of parquet files, `audiofolder`, or the package's built-in dataset, in map-style or streaming mode, and casts
   the audio column to `Audio(decode=False)` so that rows carry the encoded bytes (or a path), not decoded arrays.
2. [`LabelMap`] turns the label column into class indices: AudioSet's ontology ids (`"/m/09x0r"`) map to the fixed
   527-class list of [`audioset_labels`] with its human names; `ClassLabel` features, integer targets with a names
   column (ESC-50's `target` / `category`) and plain strings are handled too.
3. [`AudioCollator`] runs in the `DataLoader` workers: it decodes each clip (`audio_utils.load_audio`: soundfile, then
   torchcodec), downmixes, resamples with soxr to the model's rate, truncates to the frames the model sees, and stacks
   the batch. A corrupt, empty or too-short clip is dropped from its batch and reported in `skipped_index`, so the
   training loop can count it; it never stops a run.
4. The log-mel features are computed afterwards on the training device, a whole batch at once, by
   `SpecPatchFeatureExtractor.extract_features`.

Sampling: [`EpochSampler`] draws a permutation (or, with weights, AST's balanced sampling with replacement) that depends
only on `(seed, epoch)`, so every process draws the same order and `accelerate` can shard it by batches, and a resumed
run can skip exactly the batches it already trained on. Streaming datasets are sharded with
`datasets.distributed.split_dataset_by_node` ([`shard_streaming_dataset`]).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .audio_utils import load_audio
from .audioset_labels import AUDIOSET_LABELS

logger = logging.getLogger(__name__)

AUDIOSET_REPO = "agkphysics/AudioSet"
"""The AudioSet copy on the Hugging Face hub (parquet, FLAC mostly 48 kHz 24-bit). Configs and splits: `balanced`
(`train` = bal_train, `test` = eval), `unbalanced` (`train` = unbal_train, `test` = eval) and `full` (`bal_train`,
`unbal_train`, `eval`). AS-20K is `balanced`; AS-2M is `full` with the training splits joined,
`--train_split bal_train+unbal_train --eval_split eval`."""

BUILTIN_DATASET = "builtin"
"""`dataset_name` of the package's generated dataset (see [`builtin_dataset`])."""

# Column names tried, in order, when the caller does not name the label column.
LABEL_COLUMN_CANDIDATES = ("labels", "label", "target", "category", "class", "classID")
# Columns that hold human-readable class names for an integer label column (ESC-50: target -> category).
LABEL_NAME_COLUMN_CANDIDATES = ("category", "class_name", "label_name", "class")
# Columns that name a clip (kept for logging / disjointness checks).
ID_COLUMN_CANDIDATES = ("video_id", "filename", "file", "id", "path")
# Columns holding cross-validation folds (ESC-50, UrbanSound8K).
FOLD_COLUMN_CANDIDATES = ("fold",)
EVAL_SPLIT_CANDIDATES = ("test", "validation", "valid", "eval", "evaluation")


def _speech_commands_v2(train, evaluation, label_column: str, eval_split: str | None):
    from .speech_commands import apply_speech_commands_v2_protocol

    return apply_speech_commands_v2_protocol(train, evaluation, label_column, eval_split)


PROTOCOLS = {"speech_commands_v2": _speech_commands_v2}
"""Benchmark protocols `--protocol` can apply: `name -> f(train, eval, label_column, eval_split) -> (train, eval,
label_map)`. The model-selection split (`--validation_split`) goes through the same function as an evaluation split."""


def _is_audioset_id(value: Any) -> bool:
    return isinstance(value, str) and value[:3] in ("/m/", "/t/", "/g/")


# ----------------------------------------------------------------------------------------------------------------
# Label maps
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LabelMap:
    """
    Class names and the mapping from raw label values to class indices.

    Attributes:
        names (`list[str]`): human-readable class names; index `i` is class `i` (`id2label[i]`).
        multi_label (`bool`): whether a clip can carry several labels (AudioSet) or exactly one (ESC-50).
        key_to_index (`dict`): raw label value (ontology id, class name, integer target, ...) -> class index.
    """

    names: list[str]
    multi_label: bool
    key_to_index: dict[Any, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.names:
            raise ValueError("LabelMap needs at least one class name.")
        if len(set(self.names)) != len(self.names):
            # id2label must be a bijection for label2id: disambiguate repeated names.
            seen: dict[str, int] = {}
            unique = []
            for name in self.names:
                seen[name] = seen.get(name, 0) + 1
                unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
            self.names = unique
        if not self.key_to_index:
            self.key_to_index = {name: i for i, name in enumerate(self.names)}

    @property
    def num_labels(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def problem_type(self) -> str:
        return "multi_label_classification" if self.multi_label else "single_label_classification"

    @classmethod
    def audioset(cls) -> LabelMap:
        """The fixed 527 AudioSet classes: ontology ids (and display names) map to the standard class indices."""
        key_to_index = {mid: i for i, (mid, _) in enumerate(AUDIOSET_LABELS)}
        key_to_index.update({name: i for i, (_, name) in enumerate(AUDIOSET_LABELS)})
        return cls([name for _, name in AUDIOSET_LABELS], multi_label=True, key_to_index=key_to_index)

    def encode(self, value: Any) -> list[int]:
        """
        Class indices of one clip's raw label value (a scalar, or a list for multi-label data). Values that are not
        in the map (e.g. an ontology id outside the 527 classes, or -1 for "unlabelled") are left out.
        """
        values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
        indices = []
        for v in values:
            if isinstance(v, np.generic):
                v = v.item()
            index = self.key_to_index.get(v)
            if index is not None and index not in indices:
                indices.append(index)
        return indices

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "multi_label": self.multi_label}


def _feature_class_names(feature) -> tuple[list[str] | None, bool]:
    """`(names, is_sequence)` of a `ClassLabel` or a list of `ClassLabel` feature; `(None, ...)` otherwise."""
    from datasets import ClassLabel, LargeList, List, Sequence

    if isinstance(feature, ClassLabel):
        return list(feature.names), False
    if isinstance(feature, (List, LargeList, Sequence)):
        inner = feature.feature
        if isinstance(inner, ClassLabel):
            return list(inner.names), True
        return None, True
    if isinstance(feature, list) and feature and isinstance(feature[0], ClassLabel):
        return list(feature[0].names), True
    return None, isinstance(feature, list)


def infer_label_map(
    dataset,
    label_column: str,
    label_names_column: str | None = None,
    multi_label: bool | None = None,
    label_names: Sequence[str] | None = None,
    max_scan: int | None = None,
) -> LabelMap:
    """
    Builds the [`LabelMap`] of a dataset split (normally the training split).

    Resolution order:
    1. `label_names` given: class `i` is `label_names[i]`; raw values may be those names or integers `0..K-1`.
    2. AudioSet ontology ids (`"/m/..."`): the fixed 527-class list, whatever subset the split holds.
    3. A `ClassLabel` feature (or a list of them): its names.
    4. Integer labels with a names column (ESC-50's `target` and `category`): index = the integer, name from the column.
    5. Otherwise the sorted distinct values (strings, or integers as strings).

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): the split.
        label_column (`str`): the label column.
        label_names_column (`str`, *optional*): column with a human-readable name for each integer label.
        multi_label (`bool`, *optional*): forces single- or multi-label; inferred from the column type otherwise
            (list-valued columns are multi-label).
        label_names (`list[str]`, *optional*): explicit class names.
        max_scan (`int`, *optional*): for streaming datasets, rows read to discover the classes in case 4 / 5.
    """
    features = dataset.features or {}
    if label_column not in features and features:
        raise ValueError(f"Label column {label_column!r} not found; the dataset has columns {sorted(features)}.")
    feature = features.get(label_column)
    class_names, is_sequence = _feature_class_names(feature) if feature is not None else (None, False)
    streaming = not hasattr(dataset, "__len__")

    def first_values(n: int) -> list:
        if streaming:
            out = []
            for row in dataset.select_columns([label_column]).take(n):
                out.append(row[label_column])
            return out
        return dataset.select_columns([label_column])[: min(n, len(dataset))][label_column]

    sample = first_values(16)
    if feature is None:
        is_sequence = any(isinstance(v, (list, tuple)) for v in sample)
    flat_sample = [x for v in sample for x in (v if isinstance(v, (list, tuple)) else [v])]
    resolved_multi = is_sequence if multi_label is None else multi_label

    if label_names is not None:
        names = [str(n) for n in label_names]
        key_to_index = {n: i for i, n in enumerate(names)}
        key_to_index.update({i: i for i in range(len(names))})
        return LabelMap(names, resolved_multi, key_to_index)

    if flat_sample and all(_is_audioset_id(x) for x in flat_sample):
        label_map = LabelMap.audioset()
        label_map.multi_label = True if multi_label is None else multi_label
        return label_map

    if class_names is not None:
        key_to_index = {i: i for i in range(len(class_names))}
        key_to_index.update({n: i for i, n in enumerate(class_names)})
        return LabelMap(class_names, resolved_multi, key_to_index)

    def all_rows(columns: list[str]) -> list[dict]:
        subset = dataset.select_columns(columns)
        if streaming:
            if max_scan is None:
                raise ValueError(
                    f"Cannot list the classes of the streaming column {label_column!r} (no ClassLabel feature, not "
                    "AudioSet ids): pass the class names explicitly (--label_names)."
                )
            return list(subset.take(max_scan))
        data = subset[:]
        return [dict(zip(columns, vals)) for vals in zip(*(data[c] for c in columns))]

    if label_names_column is not None:
        rows = all_rows([label_column, label_names_column])
        pairs: dict[Any, str] = {}
        for row in rows:
            keys = row[label_column] if isinstance(row[label_column], (list, tuple)) else [row[label_column]]
            names_ = row[label_names_column] if isinstance(row[label_names_column], (list, tuple)) else [
                row[label_names_column]
            ]
            for k, n in zip(keys, names_):
                if pairs.setdefault(k, str(n)) != str(n):
                    raise ValueError(
                        f"Label {k!r} of column {label_column!r} has two names in {label_names_column!r}: "
                        f"{pairs[k]!r} and {n!r}."
                    )
        keys = sorted(pairs)  # integer targets 0..K-1 (ESC-50) keep their value as class index
        names = [pairs[k] for k in keys]
        key_to_index = {k: i for i, k in enumerate(keys)}
        key_to_index.update({pairs[k]: i for i, k in enumerate(keys)})
        return LabelMap(names, resolved_multi, key_to_index)

    rows = all_rows([label_column])
    values = set()
    for row in rows:
        v = row[label_column]
        values.update(v if isinstance(v, (list, tuple)) else [v])
    values.discard(None)
    if not values:
        raise ValueError(f"The label column {label_column!r} holds no labels.")
    keys = sorted(values)
    return LabelMap([str(k) for k in keys], resolved_multi, {k: i for i, k in enumerate(keys)})


# ----------------------------------------------------------------------------------------------------------------
# Column detection and dataset loading
# ----------------------------------------------------------------------------------------------------------------


def find_audio_column(features) -> str:
    """The column with an `Audio` feature, else one named `audio`; raises a ValueError when there is none."""
    from datasets import Audio

    for name, feature in (features or {}).items():
        if isinstance(feature, Audio):
            return name
    if features and "audio" in features:
        return "audio"
    raise ValueError(f"No audio column found among {sorted(features or {})}; pass --audio_column.")


def find_column(features, candidates: Iterable[str], what: str, required: bool = True) -> str | None:
    """The first of `candidates` present in `features` (case-sensitive), else None or a ValueError."""
    for name in candidates:
        if features and name in features:
            return name
    if required:
        raise ValueError(f"No {what} column found among {sorted(features or {})}; name it explicitly.")
    return None


@dataclass
class LabelColumns:
    """The columns a labeled split is read by: `label`, `label_names` (human-readable names of integer labels, such as
    ESC-50's `category` for `target`) and `fold` (cross-validation folds), the last two None when absent."""

    label: str
    label_names: str | None = None
    fold: str | None = None


def detect_label_columns(features, label_column: str | None = None, label_names_column: str | None = None,
                         fold_column: str | None = None, folds: bool = True) -> LabelColumns:
    """
    The label, label-name and fold columns of a split's `features`, one rule for every script: a named column wins;
    otherwise the label column is the first of [`LABEL_COLUMN_CANDIDATES`] present, the names column the first of
    [`LABEL_NAME_COLUMN_CANDIDATES`] when the label column holds integers, the fold column `fold` when present
    (`folds=False`: none). Single- or multi-label is decided by [`infer_label_map`] from the label column's type.
    """
    label = label_column or find_column(features, LABEL_COLUMN_CANDIDATES, "label")
    if label_column is not None and features and label_column not in features:
        raise ValueError(f"Label column {label_column!r} not found; the dataset has columns {sorted(features)}.")
    names = label_names_column
    if names is None:
        candidate = find_column(features, LABEL_NAME_COLUMN_CANDIDATES, "label name", required=False)
        if candidate and candidate != label and "int" in str(features[label]):
            names = candidate
    fold = (fold_column or find_column(features, FOLD_COLUMN_CANDIDATES, "fold", required=False)) if folds else None
    return LabelColumns(label, names, fold)


@dataclass
class DatasetSpec:
    """
    What to load: `datasets.load_dataset(name, config, data_dir=..., data_files=..., streaming=...)`.

    `name` may be a hub id, a local folder (of parquet files named `train-*.parquet` / `test-*.parquet` or with a
    dataset card), a builder name (`parquet`, `audiofolder`) with `data_dir` / `data_files`, or `"builtin"`.
    """

    name: str = BUILTIN_DATASET
    config: str | None = None
    data_dir: str | None = None
    data_files: Any = None
    streaming: bool = False
    cache_dir: str | None = None
    revision: str | None = None
    builtin_sizes: dict[str, int] | None = None  # clips per split of the built-in dataset (default 1200 / 300)


def load_audio_dataset(spec: DatasetSpec, audio_column: str | None = None):
    """
    Loads every split of a dataset with its audio column cast to `Audio(decode=False)`.

    Returns:
        `(dataset_dict, audio_column)`: a `DatasetDict` (or `IterableDatasetDict` when streaming) whose audio column
        yields `{"bytes": ..., "path": ...}` and the audio column's name.
    """
    from datasets import Audio, load_dataset

    if spec.name == BUILTIN_DATASET:
        from .builtin_dataset import builtin_dataset_dir

        path, kwargs = builtin_dataset_dir(sizes=spec.builtin_sizes), {}
    else:
        path = spec.name
        kwargs = {"data_dir": spec.data_dir, "data_files": spec.data_files, "revision": spec.revision}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    dataset = load_dataset(path, spec.config, streaming=spec.streaming, cache_dir=spec.cache_dir, **kwargs)
    if not hasattr(dataset, "keys"):
        raise ValueError(f"Expected load_dataset({path!r}) to return splits, got {type(dataset).__name__}.")
    first = next(iter(dataset.values()))
    audio_column = audio_column or find_audio_column(first.features)
    dataset = type(dataset)({split: ds.cast_column(audio_column, Audio(decode=False)) for split, ds in dataset.items()})
    return dataset, audio_column


def pick_eval_split(splits: Iterable[str], train_split: str, eval_split: str | None = None,
                    exclude: Iterable[str] = ()) -> str | None:
    """`eval_split` if given (and present), else the first of test / validation / ... that exists and is neither the
    training split nor one of `exclude` (the model-selection split), else None."""
    splits = list(splits)
    if eval_split is not None:
        if eval_split not in splits:
            raise ValueError(f"Evaluation split {eval_split!r} not found; the dataset has splits {splits}.")
        return eval_split
    taken = set(split_names(train_split)) | set(exclude)
    for name in EVAL_SPLIT_CANDIDATES:
        if name in splits and name not in taken:
            return name
    return None


def split_by_fold(dataset, fold_column: str, eval_fold: Any):
    """`(train, eval)`: the rows whose `fold_column` differs from / equals `eval_fold` (ESC-50's 5-fold protocol)."""
    folds = dataset[fold_column] if hasattr(dataset, "__len__") else None
    if folds is None:
        raise ValueError("Fold splitting needs a map-style dataset (not --streaming).")
    folds = np.asarray(folds)
    if eval_fold not in set(folds.tolist()):
        raise ValueError(f"Fold {eval_fold!r} not in column {fold_column!r} (values {sorted(set(folds.tolist()))}).")
    train_idx = np.flatnonzero(folds != eval_fold)
    eval_idx = np.flatnonzero(folds == eval_fold)
    return dataset.select(train_idx), dataset.select(eval_idx)


# ----------------------------------------------------------------------------------------------------------------
# Decoding collate
# ----------------------------------------------------------------------------------------------------------------


def decode_clip(audio: Any, sampling_rate: int) -> np.ndarray:
    """
    Decodes one row's audio value to mono float32 at `sampling_rate`.

    Accepts what `Audio(decode=False)` yields (`{"bytes": ..., "path": ...}`), a path, raw bytes, an already decoded
    `{"array": ..., "sampling_rate": ...}`, or the torchcodec `AudioDecoder` of an `Audio(decode=True)` column. Raises a ValueError for anything that is not decodable audio.
    """
    from .audio_utils import resample, to_mono, validate_waveform

    if isinstance(audio, dict):
        if audio.get("array") is not None:
            array = validate_waveform(np.asarray(audio["array"], dtype=np.float32))
            array = to_mono(array)
            rate = audio.get("sampling_rate") or sampling_rate
            return np.asarray(resample(array, rate, sampling_rate), dtype=np.float32)
        payload = audio.get("bytes")
        if payload:
            return load_audio(payload, sampling_rate=sampling_rate)[0]
        path = audio.get("path")
        if path:
            return load_audio(path, sampling_rate=sampling_rate)[0]
        raise ValueError("The audio value has neither bytes nor a path.")
    if isinstance(audio, (bytes, bytearray, str, os.PathLike)):
        return load_audio(audio, sampling_rate=sampling_rate)[0]
    if hasattr(audio, "get_all_samples"):  # a torchcodec AudioDecoder (what an `Audio(decode=True)` column yields)
        samples = audio.get_all_samples()
        array = to_mono(validate_waveform(samples.data.to(torch.float32).numpy()))
        return np.asarray(resample(array, int(samples.sample_rate), sampling_rate), dtype=np.float32)
    raise ValueError(f"Cannot decode an audio value of type {type(audio).__name__}.")


class AudioCollator:
    """
    `DataLoader` collate function that decodes, resamples, truncates and stacks a batch of rows (on the workers).

    Rows are dicts with the audio column (as `Audio(decode=False)` gives it), the label column and optionally the
    row index under `"__index__"`. Clips that fail to decode, are empty, non-finite, or shorter than `min_samples`
    are dropped from the batch; their row indices are returned in `skipped_index` (or -1 when unknown).

    Returns a dict of tensors:
        - `waveforms` `(batch, samples)` float32, right-padded with zeros to the longest kept clip;
        - `lengths` `(batch,)` number of real samples of each clip;
        - `labels`: `(batch, num_labels)` float multi-hot for multi-label data, `(batch,)` long class indices otherwise;
        - `index` `(batch,)` row indices of the kept clips (-1 when unknown);
        - `skipped_index` `(skipped,)` row indices of the dropped clips.

    Args:
        audio_column (`str`): column with the audio.
        label_column (`str`, *optional*): column with the labels; none for unlabeled data (no `labels` returned).
        label_map ([`LabelMap`], *optional*): turns raw labels into indices; needed with `label_column`.
        sampling_rate (`int`): target sampling rate in Hz.
        max_samples (`int`, *optional*): clips are truncated to their first `max_samples` samples (the frames the model
            sees, as AST does); `None` keeps them whole.
        min_samples (`int`, *optional*, defaults to 400): shorter clips count as corrupt (no full analysis window).
    """

    def __init__(
        self,
        audio_column: str,
        label_column: str | None = None,
        label_map: LabelMap | None = None,
        sampling_rate: int = 16000,
        max_samples: int | None = None,
        min_samples: int = 400,
    ):
        if label_column is not None and label_map is None:
            raise ValueError("AudioCollator needs a label_map to encode the label column.")
        self.audio_column = audio_column
        self.label_column = label_column
        self.label_map = label_map
        self.sampling_rate = int(sampling_rate)
        self.max_samples = None if max_samples is None else int(max_samples)
        self.min_samples = int(min_samples)

    @classmethod
    def for_extractor(cls, extractor, audio_column: str, label_column: str | None = None,
                      label_map: LabelMap | None = None, truncate: bool = True) -> AudioCollator:
        """The collator for a feature extractor: its sampling rate, clips cut to the samples of its `max_length`
        frames (`truncate=False`: whole clips), clips shorter than one analysis window counted as corrupt."""
        max_samples = max_samples_for_frames(extractor.max_length, extractor) if truncate else None
        return cls(audio_column, label_column, label_map, extractor.sampling_rate, max_samples,
                   min_samples=extractor.win_length)

    def _labels_tensor(self, label_indices: list[list[int]]) -> torch.Tensor:
        if self.label_map.multi_label:
            target = torch.zeros(len(label_indices), self.label_map.num_labels, dtype=torch.float32)
            for row, indices in enumerate(label_indices):
                target[row, indices] = 1.0
            return target
        return torch.tensor([indices[0] for indices in label_indices], dtype=torch.long)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        waveforms, label_indices, kept_index, skipped_index = [], [], [], []
        for row in rows:
            index = int(row.get("__index__", -1))
            if self.label_column is not None:
                indices = self.label_map.encode(row.get(self.label_column))
                if not indices and not self.label_map.multi_label:
                    # A single-label row without a known class cannot be trained on.
                    logger.warning("Skipping row %d: label %r is not a known class.", index, row.get(self.label_column))
                    skipped_index.append(index)
                    continue
            try:
                clip = decode_clip(row.get(self.audio_column), self.sampling_rate)
                if clip.shape[-1] < self.min_samples:
                    raise ValueError(f"{clip.shape[-1]} samples, fewer than {self.min_samples}")
            except Exception as err:  # corrupt audio of any kind (libsndfile, FFmpeg, ...) must not stop training
                logger.warning("Skipping corrupt or empty clip (row %d): %s", index, str(err)[:200])
                skipped_index.append(index)
                continue
            if self.max_samples is not None:
                clip = clip[: self.max_samples]
            waveforms.append(torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)))
            kept_index.append(index)
            if self.label_column is not None:
                label_indices.append(indices)

        lengths = torch.tensor([w.shape[0] for w in waveforms], dtype=torch.long)
        batch = {
            "waveforms": (
                torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)
                if waveforms
                else torch.zeros(0, self.min_samples)
            ),
            "lengths": lengths,
            "index": torch.tensor(kept_index, dtype=torch.long),
            "skipped_index": torch.tensor(skipped_index, dtype=torch.long),
        }
        if self.label_column is not None:
            if label_indices:
                batch["labels"] = self._labels_tensor(label_indices)
            else:
                shape = (0, self.label_map.num_labels) if self.label_map.multi_label else (0,)
                batch["labels"] = torch.zeros(shape, dtype=torch.float32 if self.label_map.multi_label else torch.long)
        return batch


# ----------------------------------------------------------------------------------------------------------------
# Datasets and samplers
# ----------------------------------------------------------------------------------------------------------------


class IndexedDataset(torch.utils.data.Dataset):
    """
    A map-style `datasets.Dataset` as a torch dataset whose rows carry their index (`"__index__"`), fetched in one
    Arrow read per batch (`__getitems__`, which torch's `DataLoader` uses when present).
    """

    def __init__(self, dataset, columns: Sequence[str] | None = None):
        self.dataset = dataset.select_columns(list(columns)) if columns else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = dict(self.dataset[int(index)])
        row["__index__"] = int(index)
        return row

    def __getitems__(self, indices: list[int]) -> list[dict]:
        indices = [int(i) for i in indices]
        columns = self.dataset[indices]
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        for row, index in zip(rows, indices):
            row["__index__"] = index
        return rows


def balanced_sampling_weights(label_indices: Sequence[Sequence[int]], num_labels: int) -> np.ndarray:
    """
    AST's class-balanced sampling weights (`gen_weight_file.py`): each class weighs `1000 / (count + 0.01)`, with
    `count` the number of training clips carrying it, and a clip weighs the sum of its classes' weights. Clips with
    rare classes are drawn more often; clips without any known label weigh 0.

    Args:
        label_indices: the class indices of every training clip.
        num_labels: number of classes.

    Returns:
        float64 `(num_clips,)` weights.
    """
    counts = np.zeros(num_labels, dtype=np.float64)
    for indices in label_indices:
        counts[list(indices)] += 1
    class_weight = 1000.0 / (counts + 0.01)
    return np.array([class_weight[list(indices)].sum() for indices in label_indices], dtype=np.float64)


class EpochSampler(torch.utils.data.Sampler):
    """
    The order of one epoch as a pure function of `(seed, epoch)`: a random permutation, the identity (no shuffle), or
    `num_samples` draws with replacement proportional to `weights` (AST's balanced sampler, `WeightedRandomSampler`).

    Every process builds the same order, `accelerate` hands each process its share of the batches, and a resumed run
    regenerates the interrupted epoch exactly and skips the batches already done. Call `set_epoch` (accelerate's
    `DataLoaderShard.set_epoch` forwards it) before iterating.
    """

    def __init__(
        self,
        num_examples: int,
        weights: np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_samples: int | None = None,
    ):
        if num_examples < 1:
            raise ValueError(f"EpochSampler needs at least one example, got {num_examples}.")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (num_examples,) or not np.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(f"`weights` must be {num_examples} finite non-negative numbers.")
            if weights.sum() <= 0:
                raise ValueError("`weights` sum to zero: no clip can be drawn.")
        self.num_examples = int(num_examples)
        self.weights = None if weights is None else torch.from_numpy(weights)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = int(num_samples) if num_samples is not None else self.num_examples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int | None = None) -> list[int]:
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=generator)
            reps = math.ceil(self.num_samples / self.num_examples)
            if reps > 1:
                order = torch.cat([order] + [torch.randperm(self.num_examples, generator=generator) for _ in range(1, reps)])
            return order[: self.num_samples].tolist()
        return [i % self.num_examples for i in range(self.num_samples)]

    def __iter__(self):
        return iter(self.indices())


def shard_streaming_dataset(dataset, rank: int, world_size: int, seed: int = 0, shuffle_buffer_size: int | None = 1000):
    """
    One process's share of a streaming dataset (`datasets.distributed.split_dataset_by_node`: whole parquet shards
    per process when their number divides evenly, else every `world_size`-th row), shuffled with a buffer.
    Call `.set_epoch(epoch)` on the result to reshuffle each epoch.
    """
    from datasets.distributed import split_dataset_by_node

    if world_size > 1:
        dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    if shuffle_buffer_size:
        dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    return dataset


def max_samples_for_frames(num_frames: int, feature_extractor) -> int:
    """Samples needed for `num_frames` frames of the feature extractor (longer clips are truncated to this)."""
    hop, win = feature_extractor.hop_length, feature_extractor.win_length
    if feature_extractor.frontend == "kaldi":
        return (num_frames - 1) * hop + win
    return num_frames * hop



# ----------------------------------------------------------------------------------------------------------------
# Splits, command-line data arguments, and the training scripts' data object
# ----------------------------------------------------------------------------------------------------------------


def split_names(expression: str) -> list[str]:
    """The splits of a split expression: `"train"` -> `["train"]`, `"bal_train+unbal_train"` -> both (AS-2M is
    AudioSet's balanced and unbalanced training sets joined)."""
    names = [part.strip() for part in str(expression).split("+")]
    if not all(names):
        raise ValueError(f"Split expression {expression!r}: expected names joined by '+', e.g. 'bal_train+unbal_train'.")
    return names


def select_split(dataset, expression: str):
    """One split of a `DatasetDict` / `IterableDatasetDict`, or several joined in order (`"a+b"`,
    `datasets.concatenate_datasets`). Raises a ValueError naming the available splits when one is missing."""
    from datasets import concatenate_datasets

    names = split_names(expression)
    missing = [name for name in names if name not in dataset]
    if missing:
        raise ValueError(f"Split {', '.join(map(repr, missing))} not found; the dataset has splits {list(dataset)}.")
    parts = [dataset[name] for name in names]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def split_num_rows(dataset, expression: str) -> int | None:
    """Rows of a (joined) split from the dataset's metadata, without reading it (streaming); None when unknown."""
    total = 0
    for name in split_names(expression):
        try:
            total += int(dataset[name].info.splits[name].num_examples)
        except (AttributeError, KeyError, TypeError):
            return None
    return total or None


def parse_builtin_sizes(value: str | None) -> dict[str, int] | None:
    """`--builtin_sizes "1200,300"` -> `{"train": 1200, "test": 300}`."""
    if not value:
        return None
    try:
        train_size, test_size = (int(v) for v in str(value).split(","))
    except ValueError as err:
        raise ValueError(f'--builtin_sizes expects two integers "train,test", got {value!r}.') from err
    return {"train": train_size, "test": test_size}


def add_data_arguments(parser, labeled: bool = True):
    """The data flags shared by the training scripts (an argument group of `parser`); `labeled` adds the label,
    evaluation-split, fold and protocol flags of supervised training."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", help='Hub id, local folder, builder ("parquet", "audiofolder") or "builtin".')
    g.add_argument("--dataset_config_name")
    g.add_argument("--dataset_revision", help='Hub revision, e.g. "refs/convert/parquet" for a script dataset.')
    g.add_argument("--data_dir")
    g.add_argument("--data_files", nargs="+")
    g.add_argument("--cache_dir", help="datasets cache folder.")
    g.add_argument("--builtin_sizes", help='Clips in the built-in train and test splits, e.g. "1200,300".')
    g.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it.")
    g.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Streaming shuffle buffer (rows).")
    g.add_argument("--train_split", help='Training split; several are joined with "+" (AS-2M: '
                   '"bal_train+unbal_train" of agkphysics/AudioSet config "full"). Default: train.')
    g.add_argument("--audio_column")
    g.add_argument("--max_train_samples", type=int)
    g.add_argument("--sampling_rate", type=int, default=16000)
    g.add_argument("--max_length", type=int, help="Input frames (clips are truncated / padded or cropped to them).")
    g.add_argument("--norm_mean", type=float, help="Log-mel mean (default: the recipe's / checkpoint's, else computed).")
    g.add_argument("--norm_std", type=float, help="Log-mel standard deviation (default: as --norm_mean).")
    g.add_argument("--num_workers", type=int, help="DataLoader workers (decoding and resampling).")
    if labeled:
        g.add_argument("--eval_split", help="Default: test / validation if present, else a fold or a random share. "
                       "With --validation_split: the test split, evaluated once with the selected model.")
        g.add_argument("--validation_split",
                       help="Model-selection split (Speech Commands V2: validation, the clips of validation_list.txt). "
                       "It is evaluated at every evaluation point (each epoch, or every --eval_steps), the state with "
                       "the best --selection_metric is kept, and that state is evaluated on --eval_split and saved "
                       "(AST's and EAT's protocol). Default (or \"none\"): the final state is evaluated and saved.")
        g.add_argument("--label_column")
        g.add_argument("--label_names_column", help="Column with class names for integer labels (ESC-50: category).")
        g.add_argument("--label_names", help="Comma-separated class names (needed for streaming string labels).")
        g.add_argument("--fold_column")
        g.add_argument("--eval_fold", type=int, help="Hold out this fold for evaluation (ESC-50: 1..5).")
        g.add_argument("--eval_fraction", type=float, default=0.1, help="Held-out share when there is no eval split.")
        g.add_argument("--max_eval_samples", type=int)
        g.add_argument("--protocol", choices=("none",) + tuple(PROTOCOLS),
                       help="Benchmark protocol filters (speech_commands_v2: the 35 words, no _silence_ rows, and a "
                       "refusal of the 12-class test archive; see specpatch/speech_commands.py).")
    return g


def dataset_spec_from_args(args) -> DatasetSpec:
    if args.dataset_name is None:
        raise ValueError(f"Recipe {getattr(args, 'recipe', None)!r} needs --dataset_name (a hub id or a local folder).")
    return DatasetSpec(args.dataset_name, args.dataset_config_name, args.data_dir, args.data_files, args.streaming,
                       args.cache_dir, args.dataset_revision, builtin_sizes=parse_builtin_sizes(args.builtin_sizes))


def _take(dataset, count: int | None, streaming: bool):
    if not count:
        return dataset
    return dataset.take(count) if streaming else dataset.select(range(min(count, len(dataset))))


class SkipFirstBatches:
    """
    Collate function of the first epoch of a resumed streaming run: the first `num_batches` batches are read but not
    decoded (`None`), the rest are collated by `collate_fn`; the training loop drops the first `num_batches` batches.

    The loader is built exactly as in an uninterrupted run (same dataset, epoch, workers and batch size), so it yields
    the same batches in the same order: the run resumes mid-epoch on the same data. (`datasets.IterableDataset.skip`
    cannot do this: the dataset it returns drops the shuffling configuration and the epoch, so from the second epoch
    on, or with several shards, it skips rows of another order; and with several loader workers a per-worker skip
    shifts the round-robin order of the batches.) The `DataLoader` hands batch `i` to worker `i % workers` while no
    worker has run out of rows, so worker `w`'s `k`-th batch is batch `w + k * workers` or, once a worker ran out,
    an earlier one: a batch skipped here is always one of the first `num_batches`.
    """

    def __init__(self, collate_fn, num_batches: int):
        self.collate_fn = collate_fn
        self.num_batches = int(num_batches)
        self._calls = 0  # per process: each loader worker works on its own copy

    def __call__(self, rows):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        local, self._calls = self._calls, self._calls + 1
        if worker + local * workers < self.num_batches:
            return None
        return self.collate_fn(rows)


class AudioData:
    """
    Everything a training loop needs about its data: the (joined) training split, the evaluation split, the label
    map, the worker-side collator, and loaders that shard over processes and resume exactly.

    Reads the flags of [`add_data_arguments`] from `args` (plus `seed`, `recipe`). With `labeled=False` (self-supervised
    pre-training) only the audio column is read and clips come whole (`crop_samples` is what the device-side random
    crop keeps); with `labeled=True` clips are truncated to the frames the model sees, and the evaluation split is
    `--eval_split`, the dataset's test / validation split, a held-out `--eval_fold`, or a random `--eval_fraction`;
    `--validation_split` adds a model-selection split (`validation`, see `training.ModelSelection`).
    `--protocol` applies a benchmark's filters (see [`PROTOCOLS`]) to every split.
    """

    def __init__(self, args, accelerator, extractor, labeled: bool = True):
        self.args = args
        self.labeled = labeled
        self.streaming = bool(args.streaming)
        train_split = args.train_split or "train"
        with accelerator.main_process_first():  # download / prepare once, then every process reads the cache
            dataset, self.audio_column = load_audio_dataset(dataset_spec_from_args(args), args.audio_column)
        self.dataset = dataset
        train = select_split(dataset, train_split)
        self.num_train_rows = None if self.streaming else len(train)
        if self.streaming:
            self.num_train_rows = split_num_rows(dataset, train_split)
        self.crop_samples = self.max_samples = max_samples_for_frames(extractor.max_length, extractor)
        self.label_column, self.label_map, self.evaluation, self.validation = None, None, None, None
        self.eval_split = self.validation_split = None
        if not labeled:
            self.train = _take(train.select_columns([self.audio_column]), args.max_train_samples, self.streaming)
            self.columns = [self.audio_column]
            # Whole clips come from the workers; a random crop happens on the training device.
            self.collator = AudioCollator.for_extractor(extractor, self.audio_column, truncate=False)
            return

        columns = detect_label_columns(train.features, args.label_column, args.label_names_column, args.fold_column)
        self.label_column, fold_column = columns.label, columns.fold

        validation_split = getattr(args, "validation_split", None)
        validation_split = None if validation_split in (None, "", "none") else validation_split
        if validation_split and set(split_names(validation_split)) & set(split_names(train_split)):
            raise ValueError(f"--validation_split {validation_split!r} overlaps the training split {train_split!r}.")
        validation = select_split(dataset, validation_split) if validation_split else None
        eval_split = None
        if args.eval_fold is None:
            eval_split = pick_eval_split(dataset.keys(), train_split, args.eval_split,
                                         exclude=split_names(validation_split) if validation_split else ())
            if eval_split is None and fold_column and not self.streaming:
                args.eval_fold = int(min(train.unique(fold_column)))
                logger.info("No evaluation split: holding out fold %s of column %r.", args.eval_fold, fold_column)
        if args.eval_fold is not None:
            if not fold_column:
                raise ValueError("--eval_fold needs a fold column (--fold_column).")
            train, evaluation = split_by_fold(train, fold_column, args.eval_fold)
            self.num_train_rows = len(train)
        elif eval_split is not None:
            evaluation = dataset[eval_split]
        elif not self.streaming and args.eval_fraction > 0:
            parts = train.train_test_split(test_size=args.eval_fraction, seed=args.seed)
            train, evaluation = parts["train"], parts["test"]
            self.num_train_rows = len(train)
        else:
            evaluation = None
        self.eval_split, self.validation_split = eval_split, validation_split
        if validation_split is not None:
            if evaluation is None:
                raise ValueError(f"--validation_split {validation_split!r} selects a model for a test split, but "
                                 "there is none: name one with --eval_split (or --eval_fold).")
            if validation_split == eval_split:
                logger.warning("The model-selection split and the test split are both %r: the test metrics of the "
                               "selected model are optimistic.", eval_split)

        label_names = args.label_names.split(",") if args.label_names else None
        protocol = PROTOCOLS.get(getattr(args, "protocol", None) or "none")
        if protocol is not None:
            train, evaluation, self.label_map = protocol(train, evaluation, self.label_column, eval_split)
            if validation is not None:  # the same rules as for the test split (train only lends its features)
                validation = protocol(train if self.streaming else train.select(range(0)), validation,
                                      self.label_column, validation_split)[1]
            if not self.streaming:
                self.num_train_rows = len(train)
        train = _take(train, args.max_train_samples, self.streaming)
        if evaluation is not None:
            evaluation = _take(evaluation, args.max_eval_samples, self.streaming)
        if validation is not None:
            validation = _take(validation, args.max_eval_samples, self.streaming)
        if self.label_map is None:
            self.label_map = infer_label_map(train, self.label_column, columns.label_names, label_names=label_names)
        if args.max_train_samples and not self.streaming:
            self.num_train_rows = len(train)
        self.columns = [self.audio_column, self.label_column]
        self.train, self.evaluation, self.validation = train, evaluation, validation
        self.collator = AudioCollator.for_extractor(extractor, self.audio_column, self.label_column, self.label_map)

    def sampling_weights(self) -> np.ndarray | None:
        """AST's class-balanced weights when `--balanced_sampling` asks for them (auto: multi-label data)."""
        use = getattr(self.args, "balanced_sampling", "false")
        if not self.labeled or use == "false" or (use == "auto" and not self.label_map.multi_label):
            return None
        if self.streaming:
            logger.warning("Balanced sampling needs a map-style dataset; streaming samples uniformly.")
            return None
        labels = self.train.select_columns([self.label_column])[self.label_column]
        return balanced_sampling_weights([self.label_map.encode(v) for v in labels], self.label_map.num_labels)

    def train_loader(self, per_device: int, accelerator):
        """`(stream, loader)`: this process's sharded streaming dataset (None for map-style data) and its loader.
        Map-style loaders draw an [`EpochSampler`] order and are meant for `accelerator.prepare`."""
        args = self.args
        workers = args.num_workers
        if self.streaming:
            shard = shard_streaming_dataset(self.train.select_columns(self.columns), accelerator.process_index,
                                            accelerator.num_processes, args.seed, args.shuffle_buffer_size)
            self._stream_workers = min(workers, getattr(shard, "num_shards", 1))
            return shard, torch.utils.data.DataLoader(shard, batch_size=per_device, collate_fn=self.collator,
                                                      num_workers=self._stream_workers)
        sampler = EpochSampler(len(self.train), weights=self.sampling_weights(), shuffle=True, seed=args.seed)
        loader = torch.utils.data.DataLoader(
            IndexedDataset(self.train, self.columns), batch_size=per_device, sampler=sampler,
            collate_fn=self.collator, num_workers=workers, persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(args.seed),  # keeps loader start-up off the global RNG
        )
        return None, loader

    def resumed_stream_loader(self, stream, per_device: int, skip: int):
        """The streaming loader of an interrupted epoch, without its first `skip` batches (read, not decoded): the
        same batches in the same order as the uninterrupted run (see [`SkipFirstBatches`])."""
        import itertools

        loader = torch.utils.data.DataLoader(stream, batch_size=per_device,
                                             collate_fn=SkipFirstBatches(self.collator, skip),
                                             num_workers=self._stream_workers)
        return itertools.islice(loader, skip, None)

    def eval_loader(self, per_device: int, accelerator, split: str = "evaluation"):
        """This process's contiguous share of the evaluation split (`split="validation"`: of the model-selection
        split), no padding, no duplicates, in order; None when there is no such split."""
        dataset = {"evaluation": self.evaluation, "validation": self.validation}[split]
        if dataset is None:
            return None
        rank, world = accelerator.process_index, accelerator.num_processes
        if self.streaming:
            from datasets.distributed import split_dataset_by_node

            part = dataset.select_columns(self.columns)
            part = split_dataset_by_node(part, rank=rank, world_size=world) if world > 1 else part
        else:
            n = len(dataset)
            start, stop = rank * n // world, (rank + 1) * n // world
            part = IndexedDataset(dataset.select(range(start, stop)), self.columns)
        return torch.utils.data.DataLoader(part, batch_size=per_device, collate_fn=self.collator,
                                           num_workers=self.args.num_workers)

    def statistics_clips(self, count: int = 200) -> list[np.ndarray]:
        """The first `count` decodable training clips, decoded and cut to the frames the model sees (their first
        segment), for the log-mel mean / std."""
        rows = _take(self.train.select_columns([self.audio_column]), count, self.streaming)
        clips = []
        for row in rows:
            try:
                clip = decode_clip(row[self.audio_column], self.collator.sampling_rate)
            except Exception:  # corrupt clip: skipped here as everywhere
                continue
            if clip.shape[-1] >= self.collator.min_samples:
                clips.append(clip[: self.max_samples])
        return clips


class FeatureCollator:
    """
    `AudioCollator` followed by the batched front end, for `transformers.Trainer` (which feeds each batch's keys to
    the model): returns `{"input_values": (batch, frames, mel), "labels": ...}` only. Decoding runs on the loader
    workers as in the training scripts; the log-mel runs there too (CPU).
    """

    def __init__(self, audio_collator: AudioCollator, feature_extractor):
        self.audio_collator = audio_collator
        self.feature_extractor = feature_extractor

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.audio_collator(rows)
        if batch["waveforms"].shape[0] == 0:
            raise ValueError("Every clip of this batch failed to decode; FeatureCollator cannot build a batch.")
        features, _ = self.feature_extractor.extract_features(batch["waveforms"], batch["lengths"])
        out = {"input_values": features}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

__all__ = [
    "AUDIOSET_REPO",
    "PROTOCOLS",
    "AudioData",
    "FeatureCollator",
    "SkipFirstBatches",
    "add_data_arguments",
    "parse_builtin_sizes",
    "select_split",
    "split_names",
    "BUILTIN_DATASET",
    "AudioCollator",
    "DatasetSpec",
    "EpochSampler",
    "IndexedDataset",
    "LabelColumns",
    "LabelMap",
    "detect_label_columns",
    "balanced_sampling_weights",
    "decode_clip",
    "find_audio_column",
    "find_column",
    "infer_label_map",
    "load_audio_dataset",
    "max_samples_for_frames",
    "pick_eval_split",
    "shard_streaming_dataset",
    "split_by_fold",
]
