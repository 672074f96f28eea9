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
