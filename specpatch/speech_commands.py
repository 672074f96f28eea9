# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Speech Commands V2 as the papers evaluate it (FFTP Sec. IV, AaPE Table I; AST's and EAT's SCv2 recipes).

The protocol: the 35 words are the classes (no `_silence_`, no `_unknown_` class); the clips listed in
`validation_list.txt` are the validation set, those in `testing_list.txt` the test set (11,005 clips), and every other
clip of a word folder is a training clip (84,843); the `_background_noise_` recordings are not clips of any split.

The hub copies differ from it: `google/speech_commands` (v0.02) adds a `_silence_` label (training clips cut from the
background noise) and its `test` split is the separate 12-class test archive (10 words, `_unknown_`, `_silence_`,
4,890 clips), not `testing_list.txt`. Hence two tools:

- [`convert_speech_commands`] (`python -m specpatch.speech_commands <archive or folder> <output folder>`) turns the
  original archive (`speech_commands_v0.02.tar.gz`, or its extracted folder) into a local parquet dataset with the
  exact splits `train` / `validation` / `test` and a 35-class `label` (`ClassLabel`, words in alphabetical order);
  the recipes `fftp-speechcommands` and `aape-scv2` train on it (`--dataset_name <output folder>`).
- [`apply_speech_commands_v2_protocol`] (`--protocol speech_commands_v2`, on in those recipes) keeps only rows of the
  35 words in every split, maps labels to the 35 classes, and refuses an evaluation split that is the 12-class test
  archive (evaluate on `--eval_split validation` of such a copy, or convert the original archive).
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator

logger = logging.getLogger(__name__)

SPEECH_COMMANDS_V2_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
"""The 35 words of Speech Commands V2, alphabetical: class `i` of the protocol."""

SPEECH_COMMANDS_V2_TEST_CLIPS = 11005
"""Clips in `testing_list.txt` of the V2 archive."""

_FILE_PATTERN = re.compile(r"^(?P<speaker>[0-9a-f]+)_nohash_(?P<utterance>\d+)\.wav$")


def _read_list(root: str, name: str) -> set[str]:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise ValueError(f"{root} is not a Speech Commands V2 folder: {name} is missing.")
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def _find_root(folder: str) -> str:
    """The folder holding `validation_list.txt` (the archive's top level, or one level below)."""
    if os.path.isfile(os.path.join(folder, "validation_list.txt")):
        return folder
    for name in sorted(os.listdir(folder)):
        candidate = os.path.join(folder, name)
        if os.path.isfile(os.path.join(candidate, "validation_list.txt")):
            return candidate
    raise ValueError(f"No validation_list.txt in {folder} (or one level below): not the Speech Commands V2 layout.")


def speech_commands_files(root: str) -> dict[str, list[str]]:
    """
    The protocol's split of the archive's clips: `{"train": [...], "validation": [...], "test": [...]}` with paths
    relative to `root` (`word/speaker_nohash_n.wav`), sorted. Folders that are not one of the 35 words (such as
    `_background_noise_`) are left out; a listed file that does not exist raises a ValueError.
    """
    validation, testing = _read_list(root, "validation_list.txt"), _read_list(root, "testing_list.txt")
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    found = set()
    for word in sorted(os.listdir(root)):
        folder = os.path.join(root, word)
        if not os.path.isdir(folder):
            continue
        if word not in SPEECH_COMMANDS_V2_WORDS:
            if not word.startswith("_"):
                logger.warning("Ignoring folder %r: not one of the 35 Speech Commands V2 words.", word)
            continue
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".wav"):
                continue
            relative = f"{word}/{name}"
            found.add(relative)
            split = "test" if relative in testing else "validation" if relative in validation else "train"
            splits[split].append(relative)
    missing = sorted((validation | testing) - found)
    if missing:
        raise ValueError(f"{len(missing)} clips of the validation / testing lists are missing, e.g. {missing[:3]}.")
    return splits


def _rows(root: str, files: list[str]) -> Iterator[dict]:
    for relative in files:
        word, name = relative.split("/")
        match = _FILE_PATTERN.match(name)
        with open(os.path.join(root, relative), "rb") as f:
            payload = f.read()
        yield {
            "file": relative,
            "audio": {"bytes": payload, "path": relative},
            "label": SPEECH_COMMANDS_V2_WORDS.index(word),
            "speaker_id": match.group("speaker") if match else "",
            "utterance_id": int(match.group("utterance")) if match else -1,
        }


def convert_speech_commands(source: str, output_dir: str, rows_per_shard: int = 20000) -> dict[str, int]:
    """
    Writes the original Speech Commands V2 archive (`.tar.gz` or extracted folder) as a local parquet dataset:
    `output_dir/data/{train,validation,test}-XXXXX-of-YYYYY.parquet` with columns `file`, `audio` (WAV bytes),
    `label` (`ClassLabel` of the 35 words), `speaker_id`, `utterance_id`. Load it with
    `datasets.load_dataset(output_dir)` or pass it as `--dataset_name`. Returns the clips per split.
    """
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(output_dir)) or None) as scratch:
        if os.path.isfile(source):
            with tarfile.open(source) as archive:
                try:
                    archive.extractall(scratch, filter="data")
                except TypeError:  # Python without extraction filters
                    archive.extractall(scratch)  # noqa: S202
            root = _find_root(scratch)
        else:
            root = _find_root(source)
        splits = speech_commands_files(root)
        features = Features({
            "file": Value("string"),
            "audio": Audio(sampling_rate=16000),
            "label": ClassLabel(names=list(SPEECH_COMMANDS_V2_WORDS)),
            "speaker_id": Value("string"),
            "utterance_id": Value("int32"),
        })
        os.makedirs(os.path.join(output_dir, "data"), exist_ok=True)
        counts = {}
        for split, files in splits.items():
            shards = max(1, -(-len(files) // rows_per_shard))
            for shard in range(shards):
                part = files[shard * rows_per_shard:(shard + 1) * rows_per_shard]
                dataset = Dataset.from_generator(_rows, features=features, gen_kwargs={"root": root, "files": part},
                                                 cache_dir=os.path.join(scratch, "cache"))
                dataset.to_parquet(os.path.join(output_dir, "data", f"{split}-{shard:05d}-of-{shards:05d}.parquet"))
            counts[split] = len(files)
    if counts["test"] != SPEECH_COMMANDS_V2_TEST_CLIPS:
        logger.warning("The test split has %d clips; the V2 archive's testing_list.txt has %d.", counts["test"],
                       SPEECH_COMMANDS_V2_TEST_CLIPS)
    return counts


def apply_speech_commands_v2_protocol(train, evaluation, label_column: str, eval_split: str | None = None):
    """
    The 35-word protocol on a loaded copy (`--protocol speech_commands_v2`): rows whose label is not one of the 35
    words (`_silence_`, `_unknown_`) are dropped from the training and evaluation splits, and labels map to the 35
    classes (names, or integers of the copy's own `ClassLabel`). An evaluation split with `_silence_` / `_unknown_`
    rows that was not `validation` is the 12-class test archive: refused with a ValueError.

    Returns:
        `(train, evaluation, label_map)`.
    """
    from .data import LabelMap, _feature_class_names

    names, _ = _feature_class_names((train.features or {}).get(label_column))
    key_to_word = {i: n for i, n in enumerate(names)} if names else {}

    def word_of(value):
        return key_to_word.get(value, value) if not isinstance(value, str) else value

    def keep(labels):
        return [word_of(v) in SPEECH_COMMANDS_V2_WORDS for v in labels]

    key_to_index = {}
    for index, word in enumerate(SPEECH_COMMANDS_V2_WORDS):
        key_to_index[word] = index
    for key, word in key_to_word.items():
        if word in SPEECH_COMMANDS_V2_WORDS:
            key_to_index[key] = SPEECH_COMMANDS_V2_WORDS.index(word)
    label_map = LabelMap(list(SPEECH_COMMANDS_V2_WORDS), multi_label=False, key_to_index=key_to_index)

    def filtered(dataset):
        return dataset.filter(keep, input_columns=[label_column], batched=True)

    if evaluation is not None and hasattr(evaluation, "__len__"):
        raw = [word_of(v) for v in evaluation.select_columns([label_column])[label_column]]
        extra = sorted({w for w in raw if w not in SPEECH_COMMANDS_V2_WORDS}, key=str)
        if extra and eval_split not in (None, "validation"):
            raise ValueError(
                f"The evaluation split {eval_split!r} holds {extra} rows: it is the 12-class Speech Commands test "
                "archive, not testing_list.txt (11,005 clips of the 35 words). Convert the original archive with "
                "`python -m specpatch.speech_commands speech_commands_v0.02.tar.gz <folder>` and train on that "
                "folder, or evaluate on --eval_split validation."
            )
    return filtered(train), (filtered(evaluation) if evaluation is not None else None), label_map


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Convert the original Speech Commands V2 archive to a local parquet "
                                     "dataset with the 35-word protocol's train / validation / test splits.")
    parser.add_argument("source", help="speech_commands_v0.02.tar.gz, or the folder it was extracted to.")
    parser.add_argument("output_dir", help="Folder to write (then: --dataset_name <output_dir>).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    counts = convert_speech_commands(args.source, args.output_dir)
    print(f"Wrote {args.output_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()


__all__ = [
    "SPEECH_COMMANDS_V2_TEST_CLIPS",
    "SPEECH_COMMANDS_V2_WORDS",
    "apply_speech_commands_v2_protocol",
    "convert_speech_commands",
    "speech_commands_files",
]
