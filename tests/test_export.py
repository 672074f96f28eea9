"""ONNX export: onnxruntime reproduces every model's logits (1e-4) with a dynamic batch axis where the model allows."""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
import torch
from conftest import TINY_CONFIGS, tiny_config
from transformers import AutoModelForAudioClassification

import specpatch
from specpatch.export import check_onnx

MODEL_TYPES = sorted(TINY_CONFIGS)


def _model(model_type, **kwargs):
    return AutoModelForAudioClassification.from_config(tiny_config(model_type, num_labels=5, **kwargs)).eval()


def _input_shape(path):
    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


@pytest.mark.parametrize(
    "model_type, extra, dynamic",
    [
        ("fftp_ast", {}, True),
        ("fftp_aum", {"num_hidden_layers": 1}, True),  # one layer: its export takes longest
        ("aape_vit", {"patch_embedding_type": "standard"}, True),
        ("aape_vit", {}, False),  # SBLU patch embedding: fixed batch
    ],
)
def test_onnxruntime_reproduces_the_logits(tmp_path, model_type, extra, dynamic):
    assert model_type in MODEL_TYPES
    model = _model(model_type, **extra)
    path = specpatch.export_onnx(model, tmp_path / "model.onnx", batch_size=2)
    shape = _input_shape(path)
    assert shape[1:] == [model.config.max_length, 128]
    assert isinstance(shape[0], str) if dynamic else shape[0] == 2
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_values"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    # an independent check on other random inputs and batch sizes than export_onnx's own
    worst = check_onnx(model, path, batch_sizes=(1, 5, 33) if dynamic else (2,), atol=1e-4, seed=123)
    assert worst < 1e-4


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match="dynamic batch"):
        specpatch.export_onnx(_model("aape_vit"), tmp_path / "a.onnx", dynamic_batch=True)
    base = specpatch.FFTPASTModel(tiny_config("fftp_ast"))
    with pytest.raises(ValueError, match="audio-classification"):
        specpatch.export_onnx(base, tmp_path / "b.onnx")
    with pytest.raises(ValueError, match="float32"):
        specpatch.export_onnx(_model("fftp_ast").to(torch.float64), tmp_path / "c.onnx")
    assert not list(tmp_path.iterdir())
