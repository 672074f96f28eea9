# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""End-to-end runs of the example scripts on tiny local datasets in AudioSet's and ESC-50's hub schemas (FLAC bytes
in parquet, one corrupt clip each), a tiny FFTP-AST and a few steps: single process, streaming, two processes with
`accelerate launch` (disjoint data, resume to the same weights), and the linear probe with cross-validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import run_launched
from dataset_factories import (
    AUDIOSET_SUBSET,
    make_audioset_parquet,
    make_converted_speech_commands,
    make_esc50_parquet,
)
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE = os.path.join(REPO, "examples", "finetune.py")
LINEAR_PROBE = os.path.join(REPO, "examples", "linear_probe.py")
TINY = json.dumps(
    {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "patch_size": [128, 8],
        "time_stride": 4,
    }
)
# 64 frames (0.65 s) per clip; SpecMask scaled to it (20 % of 128 x 64 cells, masks up to 16 frames wide).
TINY_ARGS = ["--config_overrides", TINY, "--max_length", "64", "--num_workers", "0", "--seed", "3"]
AUDIOSET_ARGS = ["--recipe", "fftp-audioset", "--specmask_budget", "1600", "--specmask_max_width", "16"]


def run(command: list[str], tmp_path, timeout: int = 240, extra_env: dict | None = None) -> str:
    env = dict(os.environ)
    env.update(
        {
            "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"),
            "HF_HUB_OFFLINE": "1",
            "SPECPATCH_CACHE": str(tmp_path / "specpatch_cache"),
            "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update(extra_env or {})
    returncode, output = run_launched(command, env, str(tmp_path), timeout)
    assert returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def audioset_dir(tmp_path_factory):
    return make_audioset_parquet(str(tmp_path_factory.mktemp("audioset")), num_train=8, num_test=4)


@pytest.fixture(scope="module")
def esc50_dir(tmp_path_factory):
    return make_esc50_parquet(str(tmp_path_factory.mktemp("esc50")), folds=(1, 2), corrupt_rows=(1,))


def test_finetune_audioset_schema_end_to_end(audioset_dir, tmp_path):
    out = tmp_path / "run"
    output = run(
        [sys.executable, FINETUNE, *AUDIOSET_ARGS, *TINY_ARGS, "--dataset_name", audioset_dir, "--batch_size", "4",
         "--max_train_steps", "3", "--checkpointing_steps", "2", "--output_dir", str(out)],
        tmp_path,
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 3
    assert results["train_skipped_rows"] == [3]  # the corrupt clip, skipped (and counted) every time it is drawn
    assert results["train_skipped_clip_reads"] >= 1 and "corrupt" in output
    assert 0.0 <= results["eval_mAP"] <= 1.0
    assert os.path.isdir(out / "checkpoints" / "step_00000002")
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert len(config["id2label"]) == 527 and config["id2label"]["0"] == "Speech"
    assert json.loads((out / "preprocessor_config.json").read_text())["max_length"] == 64

    # The saved folder works in the audio-classification pipeline and answers with AudioSet names.
    from transformers import pipeline

    import specpatch  # noqa: F401

    classifier = pipeline("audio-classification", model=str(out))
    predictions = classifier(str(out / "example.flac"), top_k=3)
    assert len(predictions) == 3 and all(p["label"] in config["id2label"].values() for p in predictions)
    assert "Pipeline on" in output and any(name in output for _, name in AUDIOSET_SUBSET)


def test_finetune_streaming_and_resume(audioset_dir, tmp_path):
    out = tmp_path / "stream"
    common = [sys.executable, FINETUNE, *AUDIOSET_ARGS, *TINY_ARGS, "--dataset_name", audioset_dir, "--streaming",
              "--batch_size", "2", "--max_train_steps", "3", "--checkpointing_steps", "2", "--no_pipeline_demo",
              "--output_dir", str(out)]
    run(common, tmp_path)
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 3
    # --resume picks the latest checkpoint (step 2) and runs the remaining step.
    output = run([*common, "--resume", "--max_train_steps", "4"], tmp_path)
    assert "Resumed from" in output and "step_00000002" in output
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 4


def test_finetune_builtin_recipe_quick(tmp_path):
    """The README main job's code path (built-in dataset, pipeline demo), with a tiny dataset and model."""
    out = tmp_path / "builtin"
    output = run(
        [sys.executable, FINETUNE, "--builtin_sizes", "24,8", "--num_epochs", "1", "--batch_size", "8",
         "--config_overrides", TINY, "--num_workers", "0", "--output_dir", str(out)],
        tmp_path,
    )
    results = json.loads((out / "all_results.json").read_text())
    assert results["global_step"] == 3 and 0.0 < results["eval_mAP"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["0"] == "hum" and config["problem_type"] == "multi_label_classification"
    assert "Pipeline on" in output and "Done in" in output


def checkpoint_step(path) -> int:
    return int(os.path.basename(str(path)).split("_")[-1])


def test_finetune_speech_commands_selects_the_best_validation_state(tmp_path):
    """The Speech Commands V2 protocol (AST / EAT): validation after every epoch, the best-validation state is the one
    tested and saved. The validation labels are rotated among the words, so training makes the model worse on them
    and the selected state is an early one, not the final one."""
    import numpy as np
    import torch
    from datasets import load_dataset
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    import specpatch  # noqa: F401
    from specpatch.data import decode_clip

    data = make_converted_speech_commands(str(tmp_path / "sc"), mislabeled_validation=True)
    out = tmp_path / "run"
    command = [sys.executable, FINETUNE, "--recipe", "fftp-speechcommands", *TINY_ARGS, "--dataset_name", data,
               "--batch_size", "4", "--num_epochs", "4", "--learning_rate", "2e-3", "--warmup_steps", "2",
               "--specmask_budget", "512", "--specmask_max_width", "8", "--checkpointing_steps", "4",
               "--checkpoints_total_limit", "10", "--no_pipeline_demo"]
    output = run([*command, "--output_dir", str(out)], tmp_path)
    results = json.loads((out / "all_results.json").read_text())
    history = results["history"]
    # 16 training clips, 4 per step: validation after every epoch (steps 4, 8, 12) and at the end (16), never the test.
    assert [h["step"] for h in history] == [4, 8, 12, 16] and results["global_step"] == 16
    assert all(h["validation_skipped_clips"] == 0 and not any(k.startswith("eval_") for k in h) for h in history)
    scores = [h["validation_accuracy"] for h in history]
    best = int(np.argmax(scores))  # the first of equal scores, as AST's `acc > best_acc`
    assert results["selection_metric"] == "validation_accuracy"
    assert results["selected_step"] == history[best]["step"] and results["validation_accuracy"] == max(scores)
    assert results["selected_step"] < 16, scores  # the rotated labels make the final state the worse one
    assert f"state of step {results['selected_step']}, selected by validation_accuracy" in output

    # The saved model is the selected state: the checkpoint of that step, not the final one.
    saved = load_file(str(out / "model.safetensors"))
    selected = load_file(str(out / "checkpoints" / f"step_{results['selected_step']:08d}" / "model.safetensors"))
    final = load_file(str(out / "checkpoints" / "step_00000016" / "model.safetensors"))
    assert saved.keys() == selected.keys()
    assert all(torch.equal(saved[k], selected[k]) for k in saved)
    assert any(not torch.equal(saved[k], final[k]) for k in saved)

    # The reported test metrics are the saved (selected) model's, recomputed here on the test split.
    model = AutoModelForAudioClassification.from_pretrained(str(out)).eval()
    extractor = AutoFeatureExtractor.from_pretrained(str(out))
    test = load_dataset(data, split="test", cache_dir=str(tmp_path / "hf_check"))
    correct = 0
    for row in test.cast_column("audio", test.features["audio"].__class__(decode=False)):
        clip = torch.from_numpy(decode_clip(row["audio"], 16000))[None]
        features, _ = extractor.extract_features(clip, torch.tensor([clip.shape[1]]))
        with torch.no_grad():
            correct += int(model(input_values=features).logits.argmax(-1).item() == row["label"])
    assert results["eval_accuracy"] == pytest.approx(correct / len(test)) and results["eval_skipped_clips"] == 0

    # A run resumed after the selection keeps it (the kept state travels in the checkpoints).
    resumed = tmp_path / "resumed"
    checkpoint = out / "checkpoints" / f"step_{results['selected_step'] + 4:08d}"
    run([*command, "--output_dir", str(resumed), "--resume", str(checkpoint)], tmp_path)
    again = json.loads((resumed / "all_results.json").read_text())
    assert again["selected_step"] == results["selected_step"] and again["eval_accuracy"] == results["eval_accuracy"]
    # The checkpoint of an epoch's last step is written before that epoch's validation, which the resumed run does.
    assert again["history"] == [h for h in history if h["step"] >= checkpoint_step(checkpoint)]
    reloaded = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)


def test_finetune_esc50_fold_and_linear_probe(esc50_dir, tmp_path):
    out = tmp_path / "esc"
    output = run(
        [sys.executable, FINETUNE, "--recipe", "aape-esc50", "--model_type", "fftp_ast", *TINY_ARGS,
         "--dataset_name", esc50_dir, "--batch_size", "4", "--max_train_steps", "2", "--checkpointing_steps", "0",
         "--no_pipeline_demo", "--output_dir", str(out)],
        tmp_path,
    )
    results = json.loads((out / "all_results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification"
    assert [config["id2label"][str(i)] for i in range(3)] == ["dog", "rooster", "rain"]
    assert "eval_accuracy" in results and results["eval_skipped_clips"] == 1  # row 1 (fold 1) is corrupt
    assert "holding out fold" not in output  # the recipe names fold 1 explicitly

    probe = tmp_path / "probe"
    command = [sys.executable, LINEAR_PROBE, "--model_name_or_path", str(out), "--dataset_name", esc50_dir,
               "--steps", "30", "--num_workers", "0", "--output_dir", str(probe)]
    run(command, tmp_path)
    probe_results = json.loads((probe / "probe_results.json").read_text())
    assert sorted(probe_results["folds"]) == ["1", "2"]  # 2-fold cross-validation over the `fold` column
    assert probe_results["metric"] == "accuracy" and probe_results["skipped_clips"] == 1
    assert probe_results["feature_dim"] == 64  # pooled token (32) + mean of the tokens (32)
    assert probe_results["num_clips"] == 11
    # --resume reuses the cached features and the finished folds.
    output = run([*command, "--resume"], tmp_path)
    assert "Loaded cached train features" in output and "already done" in output


def test_linear_probe_multi_label_train_test_splits(audioset_dir, tmp_path):
    """AudioSet's layout (no folds): the probe reads the same label column and 527-class multi-label map as
    finetune.py (one detection path, `specpatch.data`), fits on train, reports mAP on test, skips the corrupt clip."""
    probe = tmp_path / "probe"
    run([sys.executable, LINEAR_PROBE, "--model_type", "fftp_ast", "--config_overrides", TINY, "--max_length", "64",
         "--dataset_name", audioset_dir, "--steps", "20", "--num_workers", "0", "--output_dir", str(probe)], tmp_path)
    results = json.loads((probe / "probe_results.json").read_text())
    assert results["metric"] == "mAP" and sorted(results["folds"]) == ["test"]
    assert 0.0 < results["mean"] <= 1.0 and results["skipped_clips"] == 1 and results["num_clips"] == 7 + 4


def test_accelerate_two_processes_disjoint_data_and_exact_resume(audioset_dir, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", FINETUNE]
    # 8 training rows, 1 per process and step: 4 steps per epoch; 6 steps with a checkpoint every 2, so the resumed
    # run restarts mid-epoch (step 2 of 4). EMA, layer decay, mixup and SpecMask are all on.
    common = [*AUDIOSET_ARGS, *TINY_ARGS, "--dataset_name", audioset_dir, "--batch_size", "2", "--max_train_steps", "6",
              "--checkpointing_steps", "2", "--checkpoints_total_limit", "5", "--balanced_sampling", "false",
              "--ema_decay", "0.9", "--layer_decay", "0.8", "--warmup_steps", "2", "--no_pipeline_demo",
              "--record_example_ids"]
    cpu = {"ACCELERATE_USE_CPU": "true"}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run([*launch, *common, "--output_dir", str(full)], tmp_path, extra_env=cpu)
    results = json.loads((full / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["global_step"] == 6
    seen = [json.loads((full / f"seen_rows_rank{r}.json").read_text()) for r in range(2)]
    # First epoch: 4 rows per process, disjoint, together every training row (the corrupt row 3 included).
    assert set(seen[0][:4]).isdisjoint(seen[1][:4]) and sorted(seen[0][:4] + seen[1][:4]) == list(range(8))

    checkpoint = full / "checkpoints" / "step_00000002"
    run([*launch, *common, "--output_dir", str(resumed), "--resume", str(checkpoint)], tmp_path, extra_env=cpu)
    resumed_seen = [json.loads((resumed / f"seen_rows_rank{r}.json").read_text()) for r in range(2)]
    assert resumed_seen == [s[2:] for s in seen]  # the same remaining batches, in the same order, per process
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # the saved model is the EMA; identical after resuming from the mid-epoch checkpoint
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key


@pytest.mark.parametrize("model_type", ["fftp_ast", "fftp_aum", "aape_vit"])
def test_linear_probe_features_ignore_padding(model_type):
    """A clip's probe features are the same alone, batched with a longer clip (padded to it), and with a longer
    `max_length` (padded further): padded frames never reach the pooled features."""
    import importlib.util

    import torch
    from conftest import FRONTENDS, tiny_config
    from transformers import AutoModel

    from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor

    spec = importlib.util.spec_from_file_location("linear_probe", LINEAR_PROBE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    model = AutoModel.from_config(tiny_config(model_type)).eval()
    generator = torch.Generator().manual_seed(0)
    short, long = torch.randn(1, 4800, generator=generator) * 0.1, torch.randn(1, 10240, generator=generator) * 0.1
    extractor = SpecPatchFeatureExtractor(frontend=FRONTENDS[model_type], max_length=64)
    alone = probe.clip_features(model, extractor, short, torch.tensor([4800]))
    padded = torch.cat([torch.nn.functional.pad(short, (0, 10240 - 4800)), long])
    batched = probe.clip_features(model, extractor, padded, torch.tensor([4800, 10240]))
    extractor.max_length = 200
    longer = probe.clip_features(model, extractor, short, torch.tensor([4800]))
    assert torch.allclose(alone[0], batched[0], atol=1e-5) and torch.allclose(alone, longer, atol=1e-5)
    # Without the grouping (the old way: one padded batch through the encoder) the short clip's features move.
    features, _ = extractor.extract_features(padded, torch.tensor([4800, 10240]), max_length=64)
    naive = probe.encoder_features(model, features)
    assert not torch.allclose(naive[0], alone[0], atol=1e-3)


@pytest.mark.parametrize("script", ["finetune", "pretrain_aape"])
def test_fsdp_is_refused_with_a_clear_error(script, audioset_dir, tmp_path):
    """`accelerate launch --use_fsdp` with 2 CPU processes (gloo): accelerate cannot run FSDP on CPU (v1 fails inside
    `Accelerator()`, v2 silently falls back to data parallelism), so both scripts refuse it up front, naming the
    supported engines, instead of training something else than asked."""
    path = os.path.join(REPO, "examples", f"{script}.py")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
               "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
               "--dynamo_backend", "no", path, "--dataset_name", audioset_dir, "--max_train_steps", "1",
               "--num_workers", "0", "--output_dir", str(tmp_path / "out")]
    env = dict(os.environ)
    env.update({"HF_DATASETS_CACHE": str(tmp_path / "hf_cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "ACCELERATE_USE_CPU": "true", "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=str(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "FSDP is not supported by the specpatch training scripts" in output and "--multi_gpu" in output
    assert not os.path.isfile(tmp_path / "out" / "all_results.json")
