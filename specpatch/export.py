# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""ONNX export of the classification graph of every specpatch model.

`export_onnx(model, path)` writes the graph `input_values (batch, frames, mel) -> logits (batch, num_labels)` with
`torch.onnx.export(..., dynamo=True)` (the `torch.export` based exporter; it needs `onnxscript`), then runs it once in
onnxruntime and compares the logits with PyTorch's (`atol`, 1e-4 by default); a graph that does not reproduce the
model is deleted and a `RuntimeError` raised, so no silently broken file is left behind.

What is dynamic:

* **batch**: dynamic for FFTP-AST, FFTP-AuM (the selective scan exports as plain tensor ops) and AaPE-ViT with the
  standard patch embedding. AaPE-ViT with the SBLU patch embedding (`patch_embedding_type` `"aape"` or
  `"aape_nonadaptive"`) plans its memory-bounded convolution chunks from the batch size in Python, which
  `torch.export` specialises: its graph has the fixed batch size `batch_size`.
* **frames**: fixed, `config.max_length` by default (the length the feature extractor pads / truncates every window
  to, so it is what the pipeline feeds). The models resize their position embeddings to the input length with
  Python-level shape checks, which the exporter specialises; export another fixed length with `num_frames`.

The front end stays in PyTorch / numpy ([`SpecPatchFeatureExtractor`]): its kaldi framing runs in float64 in
cache-sized chunks that have no ONNX equivalent with the same numerics. Deploy as
`session.run(None, {"input_values": extractor(audio, sampling_rate=16000, return_tensors="np")["input_values"]})`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values, return_dict=True).logits


def supports_dynamic_batch(model) -> bool:
    """Whether the exported graph of `model` can have a dynamic batch axis (see the module docstring)."""
    config = model.config
    return not (config.model_type == "aape_vit" and getattr(config, "uses_sblu", False))


def export_onnx(
    model,
    path: str | os.PathLike,
    num_frames: int | None = None,
    dynamic_batch: bool | None = None,
    batch_size: int = 1,
    opset_version: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> str:
    """
    Exports the classification graph of a specpatch `...ForAudioClassification` model to ONNX.

    Args:
        model: an FFTP-AST, FFTP-AuM or AaPE-ViT audio-classification model (float32).
        path (`str` or `os.PathLike`): the `.onnx` file to write.
        num_frames (`int`, *optional*): input frames of the graph; defaults to `config.max_length`.
        dynamic_batch (`bool`, *optional*): defaults to whether the model supports it ([`supports_dynamic_batch`]);
            `True` for a model that does not raises a `ValueError`.
        batch_size (`int`, *optional*, defaults to 1): the fixed batch size of a graph without a dynamic batch axis.
        opset_version (`int`, *optional*): ONNX opset; the exporter's default when unset.
        verify (`bool`, *optional*, defaults to `True`): run the graph in onnxruntime and compare its logits with
            PyTorch's (needs `onnxruntime`).
        atol (`float`, *optional*, defaults to 1e-4): largest accepted absolute difference of the logits.

    Returns:
        `str`: the path written. Input `input_values` `(batch, num_frames, num_mel_bins)`, output `logits`.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ("fftp_ast", "fftp_aum", "aape_vit") or not hasattr(model, "classifier"):
        raise ValueError(
            "export_onnx exports specpatch audio-classification models (FFTPASTForAudioClassification, "
            f"FFTPAuMForAudioClassification, AaPEViTForAudioClassification); got {type(model).__name__}."
        )
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32:
        raise ValueError(f"export_onnx exports float32 models, got {parameter.dtype}; call `model.float()` first.")
    supported = supports_dynamic_batch(model)
    if dynamic_batch is None:
        dynamic_batch = supported
    elif dynamic_batch and not supported:
        raise ValueError(
            "This AaPE-ViT uses the SBLU patch embedding, whose chunk plan depends on the batch size: its graph "
            "cannot have a dynamic batch axis. Export with dynamic_batch=False and a fixed `batch_size`."
        )
    config = model.config
    num_frames = int(num_frames or config.max_length)
    path = os.fspath(path)
    wrapper = _LogitsOnly(model).eval()
    # Batch 2 as the example: torch.export specialises sizes 0 and 1.
    example_batch = 2 if dynamic_batch else int(batch_size)
    example = torch.randn(example_batch, num_frames, config.num_mel_bins, device=parameter.device)
    dynamic_shapes = {"input_values": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            path,
            dynamo=True,
            input_names=["input_values"],
            output_names=["logits"],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            external_data=parameter_bytes > 1.5e9,  # the 2 GB protobuf limit
            verbose=False,
        )
    if verify:
        try:
            check_onnx(model, path, batch_sizes=(1, 3) if dynamic_batch else (example_batch,), atol=atol)
        except Exception:
            os.remove(path)
            raise
    return path


def check_onnx(model, path: str, batch_sizes=(1, 3), atol: float = 1e-4, seed: int = 0) -> float:
    """Runs the ONNX graph at `path` in onnxruntime (CPU) on random `input_values` of each batch size and returns the
    largest absolute difference from `model`'s logits; raises a `RuntimeError` above `atol`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in batch_sizes:
        inputs = torch.randn(batch, shape[1], shape[2], generator=generator)
        got = session.run(["logits"], {"input_values": inputs.numpy()})[0]
        with torch.no_grad():
            expected = model(inputs.to(next(model.parameters()).device)).logits.float().cpu().numpy()
        difference = float(np.abs(got - expected).max())
        worst = max(worst, difference)
        if not difference <= atol:
            raise RuntimeError(
                f"The ONNX graph's logits differ from PyTorch's by {difference:.3g} (> {atol:g}) at batch {batch}."
            )
    return worst


__all__ = ["check_onnx", "export_onnx", "supports_dynamic_batch"]
