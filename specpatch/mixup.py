# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Spectrogram mixup as EAT fine-tunes with it (the AaPE recipes, Sec. IV-B): timm's `Mixup` semantics.

EAT (cwx-worst-one/EAT, `models/EAT_audio_classification.py` and `config/finetuning.yaml`) builds timm's `Mixup` with
`mixup_alpha=0.8` (the AaPE / EAT tables' "mixup 0.8"), `cutmix_alpha=0`, `prob=0.9`, `mode="batch"`,
`label_smoothing=0`, and applies it to the normalised log-mel spectrograms before SpecAugment. timm's batch mode: with
probability `prob` the whole batch is mixed with one `lambda ~ Beta(alpha, alpha)`, each clip with the batch flipped
(`x[i] <- lambda x[i] + (1 - lambda) x[B - 1 - i]`), and the targets likewise (one-hot for class indices, smoothed
when asked); otherwise the batch is left as it is (`lambda = 1`). `mode="elem"` draws the decision and lambda per clip.

The FFTP recipes keep AST's waveform mixup instead ([`~specpatch.augmentation.WaveformMixup`]: a random partner per
clip, `lambda ~ Beta(10, 10)`, probability 0.5, mixed before the front end).
"""

from __future__ import annotations

import torch
from torch import nn

from .augmentation import sample_beta


class SpectrogramMixup(nn.Module):
    """
    timm-style mixup of spectrograms and targets (EAT's fine-tuning mixup; see the module docstring).

    Args:
        alpha (`float`, *optional*, defaults to 0.8): Beta(alpha, alpha) parameter of the mixing weight (EAT: 0.8).
        prob (`float`, *optional*, defaults to 0.9): probability that a batch (`"batch"`) or a clip (`"elem"`) is mixed
            (EAT's `mixup_prob`).
        mode (`str`, *optional*, defaults to `"batch"`): `"batch"` (one decision and lambda per batch, EAT) or
            `"elem"` (per clip).
        label_smoothing (`float`, *optional*, defaults to 0.0): timm's label smoothing of one-hot targets (EAT: 0).
        num_classes (`int`, *optional*): needed when targets are class indices.
    """

    def __init__(self, alpha: float = 0.8, prob: float = 0.9, mode: str = "batch", label_smoothing: float = 0.0,
                 num_classes: int | None = None):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"SpectrogramMixup: alpha must be positive, got {alpha}.")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"SpectrogramMixup: prob must be in [0, 1], got {prob}.")
        if mode not in ("batch", "elem"):
            raise ValueError(f"SpectrogramMixup: mode must be 'batch' or 'elem', got {mode!r}.")
        self.alpha, self.prob, self.mode = float(alpha), float(prob), mode
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, prob={self.prob}, mode={self.mode!r}, label_smoothing={self.label_smoothing}"

    def _targets(self, labels: torch.Tensor, batch: int) -> torch.Tensor:
        if labels.is_floating_point() and labels.ndim == 2:
            targets = labels.float()
        elif labels.ndim == 1 and not labels.is_floating_point():
            if self.num_classes is None:
                raise ValueError("SpectrogramMixup needs num_classes to mix class-index targets.")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"SpectrogramMixup: class indices must be in [0, {self.num_classes}).")
            targets = torch.nn.functional.one_hot(labels.long(), self.num_classes).float()
        else:
            raise ValueError("SpectrogramMixup expects multi-hot / soft float targets (batch, classes) or class "
                             f"indices (batch,), got {labels.dtype} of shape {tuple(labels.shape)}.")
        if targets.shape[0] != batch:
            raise ValueError(f"SpectrogramMixup: {targets.shape[0]} targets for {batch} spectrograms.")
        if self.label_smoothing > 0:
            off = self.label_smoothing / targets.shape[-1]
            targets = targets * (1.0 - self.label_smoothing) + off
        return targets

    def sample_lambda(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(batch,)` mixing weights on the CPU: 1 where no mixing happens."""
        draws = 1 if self.mode == "batch" else batch
        use = torch.rand(draws, generator=generator) < self.prob
        lam = sample_beta(self.alpha, self.alpha, (draws,), generator=generator).float()
        lam = torch.where(use, lam, torch.ones_like(lam))
        return lam.expand(batch).clone() if self.mode == "batch" else lam

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                return_lambda: bool = False):
        """
        Args:
            input_values (`torch.Tensor` of shape `(batch, frames, mel)`): normalised spectrograms.
            labels (`torch.Tensor`): multi-hot / soft float targets `(batch, classes)` or class indices `(batch,)`.
            generator (`torch.Generator`, *optional*): CPU generator for the draws.

        Returns:
            `(mixed, targets)` (and the `(batch,)` lambdas with `return_lambda=True`); targets are float
            `(batch, classes)`.
        """
        batch = input_values.shape[0]
        targets = self._targets(labels, batch).to(input_values.device)
        lam = self.sample_lambda(batch, generator)
        if batch < 2 or bool((lam == 1).all()):
            return (input_values, targets, lam) if return_lambda else (input_values, targets)
        weight = lam.to(device=input_values.device, dtype=input_values.dtype)
        shape = (batch,) + (1,) * (input_values.ndim - 1)
        mixed = input_values * weight.view(shape) + input_values.flip(0) * (1.0 - weight.view(shape))
        t_weight = lam.to(device=targets.device, dtype=targets.dtype).unsqueeze(1)
        mixed_targets = targets * t_weight + targets.flip(0) * (1.0 - t_weight)
        return (mixed, mixed_targets, lam) if return_lambda else (mixed, mixed_targets)


__all__ = ["SpectrogramMixup"]
