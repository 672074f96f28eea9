"""Shared fixtures: tiny configurations of every model, so hub / pipeline tests run for all of them."""

from __future__ import annotations

import pytest
import torch

import specpatch

# Tiny configurations, one per model type; every model-agnostic test (Auto classes, remote code, pipeline) runs on
# each entry. Inputs are 128 mel bins x `max_length` frames.
TINY_CONFIGS: dict[str, tuple[type, dict]] = {
    "fftp_ast": (
        specpatch.FFTPASTConfig,
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_length=64,
            time_stride=4,
        ),
    ),
    "fftp_aum": (
        specpatch.FFTPAuMConfig,
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            max_length=64,
            time_stride=4,
        ),
    ),
    "aape_vit": (
        specpatch.AaPEViTConfig,
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_length=64,
            sblu_hidden_channels=4,
            sblu_kernel_size=15,
            sblu_output_dim=16,
            lambda_hidden_size=16,
            lambda_num_layers=1,
            lambda_num_attention_heads=2,
            lambda_intermediate_size=32,
            sblu_highpass_taps=15,
            predictor_hidden_size=32,
            predictor_num_layers=1,
            predictor_num_attention_heads=4,
            predictor_intermediate_size=64,
        ),
    ),
}

# The feature extractor front end each model is trained with (AaPE: log-mel, Sec. IV-B; FFTP: AST's kaldi fbank).
FRONTENDS = {"fftp_ast": "kaldi", "fftp_aum": "kaldi", "aape_vit": "logmel"}


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def tiny_config(model_type: str, **kwargs):
    """The tiny configuration of `model_type`; `kwargs` override or extend its fields."""
    config_class, fields = TINY_CONFIGS[model_type]
    return config_class(**{**fields, **kwargs})


def run_launched(command: list[str], env: dict, cwd: str, timeout: int) -> tuple[int, str]:
    """Runs a (possibly 2-process `accelerate launch`) script; returns `(returncode, output)`.

    A run that has not exited within `timeout` seconds fails (-9) with the Python stacks of every process of the run
    in its output: each one gets SIGABRT first (`PYTHONFAULTHANDLER` prints all its threads' stacks), then the whole
    process tree is killed. torchrun starts its workers in sessions of their own, so killing the launcher's process
    group would leave them running and holding the output pipes (a CI run once waited on them for 80 minutes)."""
    import signal
    import subprocess
    import time

    import psutil

    env = {**env, "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout + stderr
    except subprocess.TimeoutExpired:
        try:
            root = psutil.Process(process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for member in reversed(tree):  # workers first; one at a time, so that their stacks do not interleave
            try:
                member.send_signal(signal.SIGABRT)
                for _ in range(50):  # until it has died (a zombie until its parent reaps it), at most 5 s
                    if member.status() == psutil.STATUS_ZOMBIE:
                        break
                    time.sleep(0.1)
            except psutil.NoSuchProcess:
                pass
        for member in tree:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a grandchild we could not see still holds a pipe
            stdout, stderr = "", "(no output: the pipes stayed open after the process tree was killed)"
        return -9, f"{stdout}{stderr}\n[run_launched] no exit within {timeout} s: stacks above (SIGABRT), then killed"
