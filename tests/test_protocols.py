# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Benchmark protocols: Speech Commands V2 (35 words, official lists; converter from the original archive layout and
filters for the hub copy), AudioSet AS-2M as joined training splits of `agkphysics/AudioSet` config `full`, and every
README training command parsed by its script and loaded against local copies in the real hub layouts."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import tarfile
import types

import pytest
from dataset_factories import (
    SPEECH_COMMANDS_HUB_NAMES,
    make_audioset_parquet,
    make_esc50_parquet,
    make_hub_speech_commands_parquet,
    make_speech_commands_archive,
)

from specpatch.data import AudioData, DatasetSpec, load_audio_dataset, select_split
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.speech_commands import SPEECH_COMMANDS_V2_WORDS, convert_speech_commands, speech_commands_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_ACCELERATOR = types.SimpleNamespace(main_process_first=contextlib.nullcontext)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finetune():
    return load_script("finetune")


@pytest.fixture(scope="module")
def pretrain():
    return load_script("pretrain_aape")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_speech_commands_archive(str(tmp_path_factory.mktemp("sc_archive") / "speech_commands_v0.02"))


@pytest.fixture(scope="module")
def converted(archive, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("scv2") / "scv2")
    counts = convert_speech_commands(archive[0], out)
    return out, counts


@pytest.fixture(scope="module")
def audioset_dir(tmp_path_factory):
    return make_audioset_parquet(str(tmp_path_factory.mktemp("audioset_hub")), num_train=8, num_test=4,
                                 num_unbal_train=4)


def test_speech_commands_v2_words():
    assert len(SPEECH_COMMANDS_V2_WORDS) == 35 and len(set(SPEECH_COMMANDS_V2_WORDS)) == 35
    assert list(SPEECH_COMMANDS_V2_WORDS) == sorted(SPEECH_COMMANDS_V2_WORDS)
    assert "_silence_" not in SPEECH_COMMANDS_V2_WORDS and "_unknown_" not in SPEECH_COMMANDS_V2_WORDS


def test_archive_splits_follow_the_lists(archive, converted, tmp_path):
    root, expected = archive
    assert speech_commands_files(root) == expected  # background noise in no split; unlisted clips train
    out, counts = converted
    assert counts == {k: len(v) for k, v in expected.items()} == {"train": 16, "validation": 8, "test": 8}
    dataset, audio_column = load_audio_dataset(DatasetSpec(out, cache_dir=str(tmp_path / "hf")))
    assert sorted(dataset) == ["test", "train", "validation"] and audio_column == "audio"
    for split in dataset:
        assert sorted(dataset[split]["file"]) == expected[split]
        assert not any("_background_noise_" in f for f in dataset[split]["file"])
    label = dataset["train"].features["label"]
    assert label.names == list(SPEECH_COMMANDS_V2_WORDS)
    row = dataset["test"][0]
    assert label.names[row["label"]] == row["file"].split("/")[0]
    # The .tar.gz as distributed converts to the same splits.
    tar = tmp_path / "speech_commands_v0.02.tar.gz"
    with tarfile.open(tar, "w:gz") as archive_file:
        for name in os.listdir(root):
            archive_file.add(os.path.join(root, name), arcname=name)
    assert convert_speech_commands(str(tar), str(tmp_path / "from_tar")) == counts
    # A listed clip that is missing is an error, not a smaller test set.
    with open(os.path.join(root, "testing_list.txt"), "a") as f:
        f.write("yes/ffffffff_nohash_9.wav\n")
    try:
        with pytest.raises(ValueError, match="missing"):
            speech_commands_files(root)
    finally:
        with open(os.path.join(root, "testing_list.txt")) as f:
            lines = f.read().splitlines()[:-1]
        with open(os.path.join(root, "testing_list.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def data_for(script, argv, tmp_path, labeled=True):
    args = script.parse_args(argv + ["--cache_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "out")])
    extractor = SpecPatchFeatureExtractor(max_length=args.max_length or 128)
    return args, AudioData(args, NO_ACCELERATOR, extractor, labeled=labeled)


def test_speech_commands_recipes_use_the_protocol(finetune, converted, tmp_path):
    for recipe in ("fftp-speechcommands", "aape-scv2"):
        args, data = data_for(finetune, ["--recipe", recipe, "--dataset_name", converted[0]], tmp_path)
        assert args.protocol == "speech_commands_v2" and data.eval_split == "test"
        assert data.label_map.names == list(SPEECH_COMMANDS_V2_WORDS) and not data.label_map.multi_label
        assert len(data.train) == 16 and len(data.evaluation) == 8
        row = data.evaluation[0]
        assert data.label_map.encode(row["label"]) == [SPEECH_COMMANDS_V2_WORDS.index(row["file"].split("/")[0])]
        # Model selection on validation_list.txt (AST / EAT), testing on testing_list.txt.
        assert args.validation_split == data.validation_split == "validation" and len(data.validation) == 8
        assert set(data.validation["file"]).isdisjoint(data.evaluation["file"])
        assert set(data.validation["file"]).isdisjoint(data.train["file"])
    # Without a validation split (AudioSet, ESC-50: not in their protocols) the final state is tested.
    args, data = data_for(finetune, ["--recipe", "fftp-speechcommands", "--dataset_name", converted[0],
                                     "--validation_split", "none"], tmp_path)
    assert data.validation is None and data.eval_split == "test"
    with pytest.raises(ValueError, match="overlaps the training split"):
        data_for(finetune, ["--recipe", "fftp-speechcommands", "--dataset_name", converted[0],
                            "--validation_split", "train"], tmp_path)
    for recipe in ("builtin", "fftp-audioset", "aape-as20k", "aape-as2m", "aape-esc50"):
        assert finetune.parse_args(["--recipe", recipe]).validation_split is None
    # A recipe that names its dataset keeps its splits only for that dataset.
    args = finetune.parse_args(["--recipe", "aape-as2m", "--dataset_name", converted[0]])
    assert (args.dataset_config_name, args.train_split, args.eval_split) == (None, "train", None)


def test_protocol_filters_a_hub_copy_and_refuses_its_12_class_test_split(finetune, tmp_path):
    hub = make_hub_speech_commands_parquet(str(tmp_path / "google_speech_commands"))
    with pytest.raises(ValueError, match="12-class"):
        data_for(finetune, ["--recipe", "fftp-speechcommands", "--dataset_name", hub], tmp_path)
    args, data = data_for(finetune, ["--recipe", "fftp-speechcommands", "--dataset_name", hub,
                                     "--eval_split", "validation"], tmp_path)
    assert data.label_map.num_labels == 35
    assert len(data.validation) == 4 and data.validation.features["label"].names == list(SPEECH_COMMANDS_HUB_NAMES)
    assert all(SPEECH_COMMANDS_HUB_NAMES[v] in SPEECH_COMMANDS_V2_WORDS for v in data.validation["label"])
    hub_names = data.train.features["label"].names
    assert "_silence_" in hub_names  # the copy's own ClassLabel keeps it; the rows are gone
    assert len(data.train) == 6 and len(data.evaluation) == 4
    for split in (data.train, data.evaluation):
        assert all(hub_names[v] in SPEECH_COMMANDS_V2_WORDS for v in split["label"])
    # Integer labels of the copy map to the protocol's classes by name.
    assert data.label_map.encode(hub_names.index("backward")) == [SPEECH_COMMANDS_V2_WORDS.index("backward")]


def test_as2m_joins_the_training_splits_of_config_full(finetune, pretrain, audioset_dir, tmp_path):
    dataset, _ = load_audio_dataset(DatasetSpec(audioset_dir, "full", cache_dir=str(tmp_path / "hf")))
    assert sorted(dataset) == ["bal_train", "eval", "unbal_train"]
    assert len(select_split(dataset, "bal_train+unbal_train")) == 12
    with pytest.raises(ValueError, match="not found"):
        select_split(dataset, "bal_train+train")
    # Recipes: --dataset_name is the hub id (as in the README); the data come from the local copy in its layout.
    args = finetune.parse_args(["--recipe", "aape-as2m"])
    assert (args.dataset_name, args.dataset_config_name, args.train_split, args.eval_split) == (
        "agkphysics/AudioSet", "full", "bal_train+unbal_train", "eval")
    args.dataset_name, args.cache_dir = audioset_dir, str(tmp_path / "hf")
    data = AudioData(args, NO_ACCELERATOR, SpecPatchFeatureExtractor(max_length=64))
    assert len(data.train) == 12 and len(data.evaluation) == 4 and data.label_map.num_labels == 527
    args = pretrain.parse_args(["--recipe", "aape-as2m"])
    assert (args.dataset_config_name, args.train_split) == ("full", "bal_train+unbal_train")
    args.dataset_name, args.cache_dir, args.streaming = audioset_dir, str(tmp_path / "hf"), True
    data = AudioData(args, NO_ACCELERATOR, SpecPatchFeatureExtractor(max_length=64), labeled=False)
    assert sum(1 for _ in data.train) == 12
    for recipe in ("fftp-audioset", "aape-as20k"):  # AS-20K: config balanced, train (bal_train) / test (eval)
        args = finetune.parse_args(["--recipe", recipe])
        assert (args.dataset_config_name, args.train_split) == ("balanced", "train")


def readme_commands() -> list[tuple[str, list[str]]]:
    """`(script, arguments)` of every training-script command in the README's bash blocks."""
    text = open(os.path.join(REPO, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0]
            match = re.search(r"examples/(finetune|pretrain_aape|linear_probe)\.py(.*)", line)
            if not match:
                continue
            rest = re.sub(r"<[^>]*>", "PLACEHOLDER", match.group(2)).replace("$fold", "1")
            rest = rest.split(";")[0]
            commands.append((match.group(1), shlex.split(rest)))
    return commands



def test_every_readme_command_parses_and_loads_its_data(finetune, pretrain, audioset_dir, converted, tmp_path):
    probe = load_script("linear_probe")
    scripts = {"finetune": finetune, "pretrain_aape": pretrain, "linear_probe": probe}
    esc50 = make_esc50_parquet(str(tmp_path / "esc50"), folds=(1, 2))
    mirrors = {"agkphysics/AudioSet": audioset_dir, "ashraq/esc50": esc50, "scv2": converted[0]}
    commands = readme_commands()
    assert len(commands) >= 12 and {s for s, _ in commands} == set(scripts)
    checked = 0
    for name, argv in commands:
        args = scripts[name].parse_args(argv)  # argparse exits on an unknown flag or a bad value
        if name == "linear_probe" or args.dataset_name in (None, "builtin") or getattr(args, "list_recipes", False):
            continue
        assert args.dataset_name in mirrors, (name, argv)
        # The recipe's config and splits, loaded from a local copy in the hub dataset's own layout.
        args.dataset_name, args.cache_dir = mirrors[args.dataset_name], str(tmp_path / "hf")
        labeled = name == "finetune"
        if labeled and args.eval_fold is None and "esc50" in args.dataset_name:
            args.eval_fold = 1
        data = AudioData(args, NO_ACCELERATOR, SpecPatchFeatureExtractor(max_length=64), labeled=labeled)
        assert data.num_train_rows or args.streaming
        if labeled:
            assert data.evaluation is not None
        checked += 1
    assert checked >= 6
