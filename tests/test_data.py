# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Data pipeline: label maps, worker-side decoding with corrupt-clip skipping, sampling weights, samplers, sharding,
and the built-in dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_factories import (
    CORRUPT_BYTES,
    ESC50_SUBSET,
    flac_bytes,
    make_audioset_parquet,
    make_esc50_parquet,
)

from specpatch.audioset_labels import AUDIOSET_LABELS, AUDIOSET_NUM_CLASSES, audioset_id2label
from specpatch.data import (
    AudioCollator,
    DatasetSpec,
    EpochSampler,
    IndexedDataset,
    LabelMap,
    balanced_sampling_weights,
    detect_label_columns,
    infer_label_map,
    load_audio_dataset,
    pick_eval_split,
    shard_streaming_dataset,
    split_by_fold,
)


@pytest.fixture(scope="module")
def audioset_dir(tmp_path_factory):
    return make_audioset_parquet(str(tmp_path_factory.mktemp("audioset")), num_train=8, num_test=4)


@pytest.fixture(scope="module")
def esc50_dir(tmp_path_factory):
    return make_esc50_parquet(str(tmp_path_factory.mktemp("esc50")), folds=(1, 2, 3), clips_per_class_per_fold=1)


def test_audioset_label_list():
    assert AUDIOSET_NUM_CLASSES == 527
    assert AUDIOSET_LABELS[0] == ("/m/09x0r", "Speech")
    assert AUDIOSET_LABELS[137] == ("/m/04rlf", "Music")
    assert AUDIOSET_LABELS[526] == ("/m/07hvw1", "Field recording")
    assert len({mid for mid, _ in AUDIOSET_LABELS}) == 527
    assert audioset_id2label()[1] == "Male speech, man speaking"


def test_audioset_schema_labels_and_collate(audioset_dir, tmp_path):
    dataset, audio_column = load_audio_dataset(DatasetSpec(audioset_dir, cache_dir=str(tmp_path / "cache")))
    assert set(dataset) == {"train", "test"} and audio_column == "audio"
    train = dataset["train"]
    label_map = infer_label_map(train, "labels")
    # Ontology ids map onto the fixed 527-class list, not onto the 4 classes present.
    assert label_map.multi_label and label_map.num_labels == 527
    assert label_map.id2label[0] == "Speech" and label_map.problem_type == "multi_label_classification"
    assert label_map.encode(["/m/04rlf", "/m/09x0r", "/m/not-a-class"]) == [137, 0]

    collator = AudioCollator(audio_column, "labels", label_map, sampling_rate=16000, max_samples=8000)
    batch = collator(IndexedDataset(train, [audio_column, "labels"]).__getitems__(list(range(8))))
    # Row 3 is corrupt: dropped and reported, the other 7 decoded, resampled 32 kHz -> 16 kHz and truncated.
    assert batch["skipped_index"].tolist() == [3]
    assert batch["index"].tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert batch["waveforms"].shape == (7, 8000) and batch["waveforms"].dtype == torch.float32
    assert batch["lengths"].tolist() == [8000] * 7  # 0.7 s at 16 kHz = 11200 samples, truncated to 8000
    assert batch["labels"].shape == (7, 527)
    rows = train.select_columns(["labels"])[:]["labels"]
    for k, index in enumerate(batch["index"].tolist()):
        expected = sorted(label_map.encode(rows[index]))
        assert torch.nonzero(batch["labels"][k]).flatten().tolist() == expected


def test_collate_resamples_and_skips_every_kind_of_bad_clip():
    rate = 22050
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32) * 0.5
    label_map = LabelMap(["a", "b"], multi_label=False)
    rows = [
        {"audio": {"bytes": flac_bytes(tone, rate), "path": "ok.flac"}, "label": "b", "__index__": 0},
        {"audio": {"bytes": CORRUPT_BYTES, "path": "bad.flac"}, "label": "a", "__index__": 1},
        {"audio": {"bytes": b"", "path": None}, "label": "a", "__index__": 2},  # empty
        {"audio": {"bytes": flac_bytes(tone[:100], rate), "path": "short.flac"}, "label": "a", "__index__": 3},
        {"audio": {"bytes": flac_bytes(tone, rate), "path": "unk.flac"}, "label": "zzz", "__index__": 4},  # no class
        {"audio": {"array": np.stack([tone, tone]), "sampling_rate": rate}, "label": "a", "__index__": 5},  # decoded
    ]
    batch = AudioCollator("audio", "label", label_map, sampling_rate=16000)(rows)
    assert batch["index"].tolist() == [0, 5]
    assert sorted(batch["skipped_index"].tolist()) == [1, 2, 3, 4]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["lengths"].tolist() == [16000, 16000]
    # The resampled tone keeps its frequency: the spectrum peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(batch["waveforms"][0].numpy()))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 1
    # A batch in which every clip is corrupt is empty, not an error.
    empty = AudioCollator("audio", "label", label_map)(rows[1:3])
    assert empty["waveforms"].shape[0] == 0 and empty["labels"].shape == (0,)


def test_esc50_schema_labels_and_folds(esc50_dir, tmp_path):
    dataset, audio_column = load_audio_dataset(DatasetSpec(esc50_dir, cache_dir=str(tmp_path / "cache")))
    train = dataset["train"]
    label_map = infer_label_map(train, "target", "category")
    assert not label_map.multi_label and label_map.names == list(ESC50_SUBSET)
    assert label_map.encode(2) == [2] and label_map.encode("rooster") == [1]
    fit, held_out = split_by_fold(train, "fold", 2)
    assert set(held_out["fold"]) == {2} and 2 not in set(fit["fold"])
    assert len(fit) + len(held_out) == len(train)
    with pytest.raises(ValueError, match="Fold 7"):
        split_by_fold(train, "fold", 7)


def test_label_column_detection(esc50_dir, audioset_dir, tmp_path):
    """One rule for finetune.py and linear_probe.py: ESC-50's integer `target` gets its names from `category` and its
    folds from `fold`; AudioSet's `labels` (ontology ids) has no names column; named columns win."""
    esc50, _ = load_audio_dataset(DatasetSpec(esc50_dir, cache_dir=str(tmp_path / "cache")))
    columns = detect_label_columns(esc50["train"].features)
    assert (columns.label, columns.label_names, columns.fold) == ("target", "category", "fold")
    assert detect_label_columns(esc50["train"].features, folds=False).fold is None
    columns = detect_label_columns(esc50["train"].features, label_column="category")
    assert (columns.label, columns.label_names) == ("category", None)  # string labels name themselves
    audioset, _ = load_audio_dataset(DatasetSpec(audioset_dir, cache_dir=str(tmp_path / "cache")))
    columns = detect_label_columns(audioset["train"].features)
    assert (columns.label, columns.label_names, columns.fold) == ("labels", None, None)
    with pytest.raises(ValueError, match="not found"):
        detect_label_columns(audioset["train"].features, label_column="target")


def test_eval_split_choice_leaves_out_the_model_selection_split():
    splits = ["train", "validation", "test"]
    assert pick_eval_split(splits, "train") == "test"
    assert pick_eval_split(["train", "validation"], "train") == "validation"
    assert pick_eval_split(["train", "validation"], "train", exclude=["validation"]) is None
    assert pick_eval_split(["bal_train", "unbal_train", "eval"], "bal_train+unbal_train") == "eval"
    assert pick_eval_split(splits, "train", "validation") == "validation"  # named: taken as given
    with pytest.raises(ValueError, match="not found"):
        pick_eval_split(splits, "train", "dev")


def test_label_maps_from_classlabel_strings_and_explicit_names():
    from datasets import ClassLabel, Dataset, Features, List, Value

    ds = Dataset.from_dict({"label": [1, 0, 1]}, features=Features({"label": ClassLabel(names=["cat", "dog"])}))
    m = infer_label_map(ds, "label")
    assert m.names == ["cat", "dog"] and not m.multi_label and m.encode(1) == [1]
    ds = Dataset.from_dict({"tags": [["x", "y"], ["z"]]}, features=Features({"tags": List(Value("string"))}))
    m = infer_label_map(ds, "tags")
    assert m.names == ["x", "y", "z"] and m.multi_label and m.encode(["z", "x"]) == [2, 0]
    m = infer_label_map(ds, "tags", label_names=["z", "y", "x"])
    assert m.encode(["x"]) == [2]
    with pytest.raises(ValueError, match="not found"):
        infer_label_map(ds, "nope")


def test_balanced_weights_follow_ast():
    labels = [[0], [0], [0, 1], [2], []]
    weights = balanced_sampling_weights(labels, 3)
    class_weight = 1000.0 / (np.array([3.0, 1.0, 1.0]) + 0.01)
    expected = [class_weight[0], class_weight[0], class_weight[0] + class_weight[1], class_weight[2], 0.0]
    np.testing.assert_allclose(weights, expected)
    # Rare classes are drawn more often: class 2 (one clip) about as often as class 0 (three clips).
    sampler = EpochSampler(5, weights=weights, num_samples=20000, seed=0)
    draws = np.bincount(sampler.indices(0), minlength=5)
    assert draws[4] == 0
    np.testing.assert_allclose(draws / draws.sum(), weights / weights.sum(), atol=0.02)


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(2)
    assert list(a) != list(b)
    assert EpochSampler(4, shuffle=False).indices() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="sum to zero"):
        EpochSampler(2, weights=np.zeros(2))


def test_streaming_shards_are_disjoint(audioset_dir):
    from datasets import load_dataset

    stream = load_dataset(audioset_dir, split="train", streaming=True).select_columns(["video_id"])
    shards = [shard_streaming_dataset(stream, rank, 2, seed=0, shuffle_buffer_size=4) for rank in range(2)]
    ids = [[row["video_id"] for row in shard] for shard in shards]
    assert set(ids[0]).isdisjoint(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(row["video_id"] for row in stream)


def test_builtin_dataset_is_deterministic_and_multilabel(tmp_path):
    from specpatch.builtin_dataset import BUILTIN_CLASSES, generate_builtin_split, synthesize_clip

    first = synthesize_clip(np.random.default_rng(5))
    second = synthesize_clip(np.random.default_rng(5))
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1] and first[0].dtype == np.float32 and np.abs(first[0]).max() <= 0.9 + 1e-6
    split = generate_builtin_split(24, seed=0, duration=1.0)
    label_map = infer_label_map(split, "labels")
    assert label_map.names == list(BUILTIN_CLASSES) and label_map.multi_label
    counts = [len(v) for v in split["labels"]]
    assert min(counts) >= 1 and max(counts) <= 3 and max(counts) > 1
    batch = AudioCollator("audio", "labels", label_map)(IndexedDataset(split).__getitems__([0, 1, 2]))
    assert batch["waveforms"].shape == (3, 16000) and batch["skipped_index"].numel() == 0
