"""Initialisation schemes (`initializer_scheme`): PyTorch's fan-in defaults and ViT's fixed truncated normal."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_CONFIGS
from torch import nn

import specpatch
from specpatch.modeling_layers import init_transformer_weights

CLASSIFIERS = {
    "fftp_ast": specpatch.FFTPASTForAudioClassification,
    "fftp_aum": specpatch.FFTPAuMForAudioClassification,
    "aape_vit": specpatch.AaPEViTForAudioClassification,
}


def _model(model_type, **overrides):
    config_class, fields = TINY_CONFIGS[model_type]
    torch.manual_seed(0)
    return CLASSIFIERS[model_type](config_class(**{**fields, "hidden_size": 96, "intermediate_size": 384,
                                                   "num_labels": 5, **overrides}))  # fmt: skip


def _plain_linears(model):
    """Linear layers initialised by the generic scheme (the Mamba mixers keep Mamba's own initialisation)."""
    mixers = [m for m in model.modules() if type(m).__name__ == "FFTPAuMMixer"]
    inside = {id(sub) for mixer in mixers for sub in mixer.modules()}
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in inside]


@pytest.mark.parametrize("model_type", sorted(CLASSIFIERS))
def test_pytorch_scheme_scales_with_fan_in(model_type):
    model = _model(model_type)
    assert model.config.initializer_scheme == "pytorch"  # the default
    linears = _plain_linears(model)
    assert linears
    for name, linear in linears:
        fan_in = linear.in_features
        bound = 1 / math.sqrt(fan_in)
        role = getattr(linear, "attention_role", None)
        if role is not None:  # attention as nn.MultiheadAttention: Xavier-uniform qkv, zero biases
            if role == "qkv":
                bound = math.sqrt(6 / (fan_in + linear.out_features))
            assert linear.weight.abs().max() <= bound + 1e-6 and linear.weight.std() > 0.8 * bound / math.sqrt(3)
            assert linear.bias is None or torch.all(linear.bias == 0), name
            continue
        assert linear.weight.abs().max() <= bound + 1e-6, name
        if linear.weight.numel() >= 1000:  # uniform(-b, b) has std b / sqrt(3)
            assert abs(linear.weight.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3), name
        if linear.bias is not None and linear.bias.numel() >= 16:
            assert linear.bias.abs().max() <= bound + 1e-6 and linear.bias.abs().max() > 0, name


@pytest.mark.parametrize("model_type", sorted(CLASSIFIERS))
def test_vit_scheme_is_fixed_truncated_normal(model_type):
    model = _model(model_type, initializer_scheme="vit", initializer_range=0.02)
    for name, linear in _plain_linears(model):
        if name.endswith("lambda_encoder.output_projection"):
            continue  # its bias starts AaPE's Lambda encoder at the non-adaptive SBLU's kernels
        assert linear.weight.abs().max() <= 6 * 0.02, name  # truncation bounds are +-2 (absolute), as in timm
        if linear.weight.numel() >= 1000:
            assert abs(linear.weight.std().item() - 0.02) < 0.002, name
        if linear.bias is not None:
            assert torch.all(linear.bias == 0), name


def test_attention_is_initialised_as_pytorch_multihead_attention():
    model = _model("fftp_ast")
    attention = model.fftp_ast.encoder.layers[0].attention
    reference = nn.MultiheadAttention(96, 4)  # what nn.TransformerEncoderLayer builds
    for ours, theirs in ((attention.qkv.weight, reference.in_proj_weight), (attention.proj.weight, reference.out_proj.weight)):
        assert ours.shape == theirs.shape
        assert abs(ours.abs().max().item() - theirs.abs().max().item()) < 0.02 * theirs.abs().max().item()
        assert abs(ours.std().item() - theirs.std().item()) < 0.05 * theirs.std().item()
    assert torch.all(attention.qkv.bias == 0) and torch.all(attention.proj.bias == 0)


def test_schemes_agree_at_vit_b_width_and_differ_when_narrow():
    """PyTorch's default scale 1/sqrt(3 fan_in) equals ViT's 0.02 at ViT-B width (768), and is 3x larger at 96."""
    for width, ratio in ((768, 1.0), (96, 2.83)):
        pytorch_layer, vit_layer = nn.Linear(width, width), nn.Linear(width, width)
        init_transformer_weights(pytorch_layer, 0.02, "pytorch")
        init_transformer_weights(vit_layer, 0.02, "vit")
        measured = pytorch_layer.weight.std() / vit_layer.weight.std()
        assert abs(measured.item() / 1.04 - ratio) < 0.1 * ratio  # 1/sqrt(3 * 768) = 0.0208 = 1.04 x 0.02


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="initializer_scheme"):
        _model("fftp_ast", initializer_scheme="xavier")


@pytest.mark.parametrize("model_type", sorted(CLASSIFIERS))
def test_loading_keeps_weights_whatever_the_scheme(model_type, tmp_path):
    model = _model(model_type, initializer_scheme="vit")
    model.save_pretrained(tmp_path)
    loaded = CLASSIFIERS[model_type].from_pretrained(tmp_path, initializer_scheme="pytorch")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
