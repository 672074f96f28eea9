# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""The HEAR 2021 common API (https://hearbenchmark.com/hear-api.html) for any specpatch checkpoint.

    from specpatch import hear
    model = hear.load_model("path/to/save_pretrained_folder")
    scene = hear.get_scene_embeddings(audio, model)                 # (n_sounds, 2 * hidden_size)
    frames, timestamps = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, T, hidden_size), (n_sounds, T) ms

`audio` is a float32 tensor `(n_sounds, samples)` in [-1, 1] at `model.sample_rate` (16 kHz), on the model's device.
The embeddings are those of `specpatch.inference`: timestamp embeddings are the encoder's time-column tokens (one per
token stride: 40 ms for fftp-248, 10 ms for fftp-991, 160 ms for AaPE-ViT), stitched over overlapping windows for
audio longer than the model window; the scene embedding is the pooled output averaged over windows concatenated with
the mean timestamp embedding (the linear-probing features of M2D / EVAR).

Validated with the official checker (a separate install, it pulls TensorFlow):
`pip install "specpatch[hear]" && hear-validator specpatch.hear --model <save_pretrained folder>`.
"""

from __future__ import annotations

import torch
from torch import nn

from .inference import scene_embeddings, timestamp_embeddings

# Windows per forward pass in the embedding functions.
BATCH_SIZE = 16


class SpecPatchHEARModel(nn.Module):
    """A specpatch encoder and its feature extractor with the attributes the HEAR API asks for."""

    def __init__(self, model: nn.Module, feature_extractor):
        super().__init__()
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.timestamp_embedding_size = int(model.config.hidden_size)  # the encoder's width
        self.scene_embedding_size = 2 * self.timestamp_embedding_size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return get_scene_embeddings(audio, self)


def load_model(model_file_path: str = "", **from_pretrained_kwargs) -> SpecPatchHEARModel:
    """
    Loads a specpatch checkpoint for the HEAR API.

    Args:
        model_file_path (`str`):
            A `save_pretrained` folder (or hub id) of any specpatch model: an audio-classification model, a bare
            encoder or an AaPE-ViT pre-training checkpoint (its student encoder is used). Its feature extractor is
            loaded from the same place.
        from_pretrained_kwargs: passed to `from_pretrained` (e.g. `trust_remote_code=True`).
    """
    if not model_file_path:
        raise ValueError(
            "specpatch.hear.load_model needs `model_file_path`: a save_pretrained folder (or hub id) of a specpatch "
            "checkpoint with its feature extractor; there is no built-in default checkpoint."
        )
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

    config = AutoConfig.from_pretrained(model_file_path, **from_pretrained_kwargs)
    # A classification checkpoint loads whole (no "unexpected classifier weights" report); its encoder is used.
    is_classifier = any(name.endswith("ForAudioClassification") for name in (config.architectures or []))
    auto_class = AutoModelForAudioClassification if is_classifier else AutoModel
    model = auto_class.from_pretrained(model_file_path, **from_pretrained_kwargs)
    extractor = AutoFeatureExtractor.from_pretrained(model_file_path, **from_pretrained_kwargs)
    return SpecPatchHEARModel(model, extractor)


def _check(audio, model) -> torch.Tensor:
    if not isinstance(model, SpecPatchHEARModel):
        raise ValueError(f"Expected the model returned by specpatch.hear.load_model, got {type(model).__name__}.")
    if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
        raise ValueError(
            "HEAR audio must be a torch tensor (n_sounds, samples), got "
            f"{type(audio).__name__} {tuple(getattr(audio, 'shape', ()))}."
        )
    return audio


def get_timestamp_embeddings(audio: torch.Tensor, model: SpecPatchHEARModel) -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeddings, timestamps)`: float32 `(n_sounds, n_timestamps, timestamp_embedding_size)` and the centre time
    of every embedding in milliseconds, `(n_sounds, n_timestamps)`, on a regular grid."""
    audio = _check(audio, model)
    return timestamp_embeddings(model.model, model.feature_extractor, audio, batch_size=BATCH_SIZE)


def get_scene_embeddings(audio: torch.Tensor, model: SpecPatchHEARModel) -> torch.Tensor:
    """float32 `(n_sounds, scene_embedding_size)` clip embeddings."""
    audio = _check(audio, model)
    return scene_embeddings(model.model, model.feature_extractor, audio, batch_size=BATCH_SIZE)


__all__ = ["SpecPatchHEARModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
