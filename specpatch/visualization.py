# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Interpretability helpers and figures: attention rollout, mask comparisons, SBLU parameters, efficiency plots.

The computations (`attention_rollout`, `patch_scores_to_spectrogram`) need only torch. The plotting functions import
matplotlib lazily (`pip install specpatch[viz]`) and write PNG files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .configuration_patching import patch_pair


def attention_rollout(
    attentions: Sequence[torch.Tensor], num_prefix_tokens: int, residual_weight: float = 0.5
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each patch token flows into the prefix (class) tokens.

    Each layer's attention, averaged over heads, is mixed with the identity for the residual connection,
    `A' = residual_weight * I + (1 - residual_weight) * A`, re-normalised over keys, and the layers are multiplied from
    the first to the last. The rows of the prefix tokens (class and, for AST, distillation token) are averaged.

    Args:
        attentions: one `(batch, heads, tokens, tokens)` tensor per layer (the model's `attentions` output).
        num_prefix_tokens: tokens before the patches (2 for FFTP-AST, 1 for AaPE-ViT).

    Returns:
        `(batch, patches)` relevance of every patch token, summing to at most 1 per clip.
    """
    if not attentions:
        raise ValueError("Attention rollout needs the attention maps: call the model with `output_attentions=True`.")
    rollout = None
    for layer_attention in attentions:
        attention = layer_attention.float().mean(dim=1)
        identity = torch.eye(attention.shape[-1], device=attention.device).expand_as(attention)
        attention = residual_weight * identity + (1.0 - residual_weight) * attention
        attention = attention / attention.sum(dim=-1, keepdim=True)
        rollout = attention if rollout is None else attention @ rollout
    return rollout[:, :num_prefix_tokens, num_prefix_tokens:].mean(dim=1)


def patch_scores_to_spectrogram(
    scores: torch.Tensor,
    patch_size: int | Sequence[int],
    stride: Sequence[int],
    num_frames: int,
    num_mel_bins: int,
) -> torch.Tensor:
    """Spreads per-patch scores `(batch, patches)` (frequency-major patch order) over the spectrogram cells each patch covers.

    Overlapping patches (strides smaller than the patch, as in AST's 16 x 16 / 10 and every FFTP setting with a time
    stride below 10) are averaged per cell; cells no patch covers are 0. Returns `(batch, num_frames, num_mel_bins)`,
    the `input_values` layout, so the map overlays the features directly.
    """
    kernel = patch_pair(patch_size)
    batch = scores.shape[0]
    # `fold` sums every patch's constant block into the (mel, frames) plane; dividing by the folded ones averages.
    blocks = scores.float().reshape(batch, 1, -1).expand(batch, kernel[0] * kernel[1], scores.shape[-1])
    output_size = (num_mel_bins, num_frames)
    total = F.fold(blocks, output_size, kernel_size=kernel, stride=tuple(stride))
    coverage = F.fold(torch.ones_like(blocks[:1]), output_size, kernel_size=kernel, stride=tuple(stride))
    return (total / coverage.clamp(min=1))[:, 0].transpose(1, 2)
