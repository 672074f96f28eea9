# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""`examples/pretrain_aape.py` end to end on a tiny AaPE-ViT and a local parquet copy in AudioSet's schema (FLAC bytes,
one corrupt clip): a single-process run in this process (corrupt clip skipped and counted, checkpoints, the output
loading into `AaPEViTForAudioClassification`, continuing from it), streaming with `--resume`, and two processes with
`accelerate launch` (disjoint data, identical EMA teachers on both ranks, resume to bit-identical weights)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import sys

import pytest
import torch
from conftest import run_launched
from dataset_factories import make_audioset_parquet
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "pretrain_aape.py")
# 32 mel bins x 64 frames, 8 x 8 patches: 4 x 8 = 32 tokens, 4 views per clip.
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_mel_bins": 32,
    "patch_size": 8,
    "sblu_hidden_channels": 4,
    "sblu_kernel_size": 15,
    "sblu_output_dim": 16,
    "sblu_highpass_taps": 15,
    "lambda_hidden_size": 16,
    "lambda_num_layers": 1,
    "lambda_num_attention_heads": 2,
    "lambda_intermediate_size": 32,
    "predictor_hidden_size": 32,
    "predictor_num_layers": 1,
    "predictor_num_attention_heads": 4,
    "predictor_intermediate_size": 64,
    "num_views": 4,
    "mask_block_size_range": [2, 3],
    "contrastive_projection_dim": 16,
}
# 0.7 s clips at 32 kHz (70 frames at 16 kHz): 64-frame crops start anywhere in the first 960 samples.
TINY_ARGS = ["--config_overrides", json.dumps(TINY), "--max_length", "64", "--num_workers", "0", "--seed", "3",
             "--warmup_steps", "1", "--logging_steps", "1"]


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_aape", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def audioset_dir(tmp_path_factory):
    return make_audioset_parquet(str(tmp_path_factory.mktemp("audioset")), num_train=8, num_test=4)


def run_in_process(script, argv: list[str]) -> dict:
    """`main(argv)` in this process, on one thread (tiny models run fastest so, as in the subprocess runs);
    accelerate's process-wide state and the thread count are restored afterwards."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return script.main(argv)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def teacher_digest(tensors: dict) -> str:
    """The script's `parameter_digest` of the teacher, recomputed from a saved `model.safetensors`."""
    digest = hashlib.sha256()
    for name in sorted(k for k in tensors if k.startswith("teacher.")):
        digest.update(name[len("teacher."):].encode())
        digest.update(tensors[name].to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_config_overrides_parsing(script):
    parse = script.parse_config_overrides
    assert parse('{"hidden_size": 64}') == {"hidden_size": 64}
    assert parse("hidden_size=64, patch_size=[16,16],position_embedding_type=learned,qkv_bias=false") == {
        "hidden_size": 64, "patch_size": [16, 16], "position_embedding_type": "learned", "qkv_bias": False}
    assert parse(None) == {} and parse("") == {}
    for bad in ("hidden_size", "[1, 2]", "{not json}", "64=hidden_size"):
        with pytest.raises(ValueError, match="config_overrides"):
            parse(bad)


def test_random_crop_against_slicing(script):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1000, 300, 640, 999])
    waveforms = torch.zeros(4, 1000)
    for row, length in enumerate(lengths.tolist()):
        waveforms[row, :length] = torch.arange(1, length + 1, dtype=torch.float32) + 10_000 * row
    starts = set()
    for _ in range(20):
        crops, new_lengths = script.random_crop(waveforms, lengths, 640, generator)
        assert crops.shape == (4, 640) and new_lengths.tolist() == [640, 300, 640, 640]
        for row in range(4):
            start = int(crops[row, 0].item()) - 1 - 10_000 * row  # values encode the sample index
            assert 0 <= start <= max(lengths[row].item() - 640, 0)
            n = new_lengths[row].item()
            assert torch.equal(crops[row, :n], waveforms[row, start:start + n])
            assert not crops[row, n:].any()  # zero after a short clip's end
            if row == 0:
                starts.add(start)
    assert len(starts) > 10  # the start is random (uniform over 0..360)
    # Nothing longer than the crop: returned unchanged.
    short, short_lengths = script.random_crop(waveforms[1:2, :300], lengths[1:2], 640, generator)
    assert torch.equal(short, waveforms[1:2, :300]) and short_lengths.tolist() == [300]


def test_single_process_run_skips_corrupt_clip_and_loads_as_classifier(script, audioset_dir, tmp_path, caplog,
                                                                      monkeypatch):
    from accelerate import Accelerator
    from transformers import AutoFeatureExtractor

    from specpatch import AaPEViTForAudioClassification, AaPEViTForPreTraining

    tracked = []  # what reaches accelerate's trackers (`--report_to`)
    original_log = Accelerator.log
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw: (
        tracked.append((step, dict(values))), original_log(self, values, step=step, **kw))[1])
    out = tmp_path / "run"
    common = ["--dataset_name", audioset_dir, "--cache_dir", str(tmp_path / "hf"), *TINY_ARGS]
    # 8 rows, 4 clips (16 views) per step: 2 steps per epoch, every row (the corrupt row 3 too) drawn in epoch 0.
    with caplog.at_level(logging.WARNING):
        results = run_in_process(script, [*common, "--batch_size", "16", "--max_train_steps", "3",
                                          "--checkpointing_steps", "2", "--output_dir", str(out)])
    assert results["global_step"] == 3 and results["num_processes"] == 1 and results["clips_per_step"] == 4
    assert results["train_skipped_rows"] == [3] and results["train_skipped_clip_reads"] >= 1
    assert "Skipping corrupt or empty clip (row 3)" in caplog.text
    assert [h["step"] for h in results["history"]] == [1, 2, 3]
    for entry in results["history"]:
        parts = entry["masked_loss"] + entry["utterance_loss"] + 0.1 * entry["contrastive_loss"]
        assert entry["loss"] == pytest.approx(parts, rel=1e-5) and entry["contrastive_loss"] > 0
    assert [h["skipped_clips"] for h in results["history"]][-1] == results["train_skipped_clip_reads"]
    assert [step for step, _ in tracked] == [1, 2, 3]
    assert {"loss", "masked_loss", "utterance_loss", "contrastive_loss", "lr", "ema_momentum", "skipped_clips"} <= set(
        tracked[-1][1]) and tracked[-1][1]["loss"] == results["history"][-1]["loss"]
    # Teacher momentum of the last update: DINOv2's cosine schedule at step 2 of 3.
    assert results["final_ema_momentum"] == pytest.approx(1.0 - 0.006 * (1 + math.cos(2 / 3 * math.pi)) / 2)
    assert os.path.isdir(out / "checkpoints" / "step_00000002")

    saved = load_file(str(out / "model.safetensors"))
    assert teacher_digest(saved) == results["teacher_digests"][0]
    assert any(not torch.equal(saved[k], saved["aape_vit." + k[len("teacher."):]]) for k in saved
               if k.startswith("teacher.encoder."))  # the EMA teacher lags the student
    extractor_config = json.loads((out / "preprocessor_config.json").read_text())
    assert extractor_config["frontend"] == "logmel" and extractor_config["max_length"] == 64
    assert extractor_config["num_mel_bins"] == 32 and extractor_config["mean"] == pytest.approx(results["norm_mean"])

    # The output loads into the classifier: the student encoder's weights and a new head.
    classifier, info = AaPEViTForAudioClassification.from_pretrained(str(out), num_labels=5, output_loading_info=True)
    assert info["missing_keys"] and all(k.startswith("classifier.") for k in info["missing_keys"])
    for name, value in classifier.aape_vit.state_dict().items():
        if "aape_vit." + name in saved:
            assert torch.equal(value, saved["aape_vit." + name]), name
    extractor = AutoFeatureExtractor.from_pretrained(str(out))
    features = extractor(torch.randn(16000).numpy() * 0.1, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        assert classifier(**features).logits.shape == (1, 5)

    # Continue pre-training from the output: the teacher is loaded (not re-copied), training fields can change.
    continued = tmp_path / "continued"
    model = AaPEViTForPreTraining.from_pretrained(str(out))
    assert teacher_digest({f"teacher.{k}": v for k, v in model.teacher.state_dict().items()}) == teacher_digest(saved)
    results = run_in_process(script, [*common, "--model_name_or_path", str(out), "--num_views", "2",
                                      "--batch_size", "8", "--max_train_steps", "1", "--checkpointing_steps", "0",
                                      "--output_dir", str(continued)])
    assert results["global_step"] == 1 and results["num_views"] == 2
    assert json.loads((continued / "preprocessor_config.json").read_text())["mean"] == pytest.approx(
        extractor_config["mean"])  # the checkpoint's statistics are kept
    with pytest.raises(ValueError, match="would change the architecture"):
        run_in_process(script, [*common, "--model_name_or_path", str(out), "--config_overrides", "hidden_size=64",
                                "--output_dir", str(tmp_path / "bad")])


def test_streaming_and_exact_resume_in_the_second_epoch(script, audioset_dir, tmp_path, caplog, monkeypatch):
    import datasets

    # datasets sleeps 5 s whenever a streamed parquet iterator is closed early (an Arrow thread-shutdown workaround
    # meant for interpreter exit); this process lives on, so the tiny runs skip the wait.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    out = tmp_path / "stream"
    # 8 rows, 2 clips per step: 4 steps per epoch; the checkpoint at step 5 is one step into the second epoch.
    common = ["--dataset_name", audioset_dir, "--cache_dir", str(tmp_path / "hf"), "--streaming", *TINY_ARGS,
              "--batch_size", "2", "--batch_unit", "clips", "--max_train_steps", "6", "--checkpointing_steps", "5",
              "--output_dir", str(out)]
    full = run_in_process(script, common)
    assert full["global_step"] == 6 and full["epochs_completed"] == 1
    uninterrupted = load_file(str(out / "model.safetensors"))
    with caplog.at_level(logging.INFO):
        resumed = run_in_process(script, [*common, "--resume"])  # the latest checkpoint of --output_dir
    assert "Resumed from" in caplog.text and "step_00000005" in caplog.text
    assert resumed["global_step"] == 6 and resumed["history"] == full["history"][5:]
    for key, value in load_file(str(out / "model.safetensors")).items():
        assert torch.equal(value, uninterrupted[key]), key  # same rows, crops and masks after the resume


def run(command: list[str], tmp_path, timeout: int = 90) -> str:
    env = dict(os.environ)
    env.update({"HF_DATASETS_CACHE": str(tmp_path / "hf_cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
    returncode, output = run_launched(command, env, str(tmp_path), timeout)
    assert returncode == 0, output[-6000:]
    return output


def test_accelerate_two_processes_identical_teachers_and_exact_resume(audioset_dir, tmp_path):
    # `--multi_gpu` on a CPU-only machine: torchrun starts the processes and the script joins them with gloo
    # (`accelerate launch --cpu --num_processes 2` would start a single process without MPI).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
              SCRIPT]
    # 8 rows, 2 clips per process and step: 2 steps per epoch. 3 steps with a checkpoint after the first, so the
    # resumed run restarts mid-epoch, then crosses into the next epoch.
    common = [*TINY_ARGS, "--dataset_name", audioset_dir, "--batch_size", "4", "--batch_unit", "clips",
              "--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "5",
              "--record_example_ids"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run([*launch, *common, "--output_dir", str(full)], tmp_path)
    results = json.loads((full / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["global_step"] == 3
    assert results["train_skipped_rows"] == [3]
    seen = [json.loads((full / f"seen_rows_rank{r}.json").read_text()) for r in range(2)]
    # First epoch: 4 rows per process, disjoint, together every training row (the corrupt row 3 included).
    assert set(seen[0][:4]).isdisjoint(seen[1][:4]) and sorted(seen[0][:4] + seen[1][:4]) == list(range(8))
    # The EMA teachers are bit-identical on both ranks and equal the saved one; so are the students.
    saved = load_file(str(full / "model.safetensors"))
    assert results["teacher_digests"] == [teacher_digest(saved)] * 2
    assert len(set(results["student_digests"])) == 1

    run([*launch, *common, "--output_dir", str(resumed), "--resume", str(full / "checkpoints" / "step_00000001")],
        tmp_path)
    resumed_results = json.loads((resumed / "all_results.json").read_text())
    resumed_seen = [json.loads((resumed / f"seen_rows_rank{r}.json").read_text()) for r in range(2)]
    assert resumed_seen == [s[2:] for s in seen]  # the same remaining batches, in the same order, per process
    assert resumed_results["teacher_digests"] == results["teacher_digests"]
    assert resumed_results["train_skipped_clip_reads"] == results["train_skipped_clip_reads"]
    assert resumed_results["history"] == results["history"][1:]  # the same losses at steps 2 and 3
    other = load_file(str(resumed / "model.safetensors"))
    assert saved.keys() == other.keys()
    for key in saved:  # student, teacher, predictor and heads: identical after resuming mid-epoch
        assert torch.equal(saved[key], other[key]), key
