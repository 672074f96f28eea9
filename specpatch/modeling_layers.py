# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Building blocks shared by every specpatch model.

* `SpectrogramPatchEmbeddings`: the Conv2d patch stem of AST / ViT, generalised to rectangular patches so that
  Full-Frequency Temporal Patching (FFTP, fftp-specmask.txt Sec. III-A) is one configuration of it.
* `resize_patch_position_embeddings`: resizes learned 2-D position embeddings to a new patch grid.
* `TransformerEncoderLayer` / `TransformerEncoder`: the pre-norm ViT block of AST and AaPE-ViT with SDPA
  attention, an eager path that returns attention probabilities (needed by attention rollout), stochastic depth
  and gradient checkpointing.
* `DropPath`: stochastic depth, shared by the Transformer and the Mamba blocks.

Everything here is configuration-agnostic (plain arguments), so one implementation serves all models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_patching import patch_pair


def conv_output_length(size: int, kernel: int, stride: int, axis_name: str = "axis") -> int:
    """Number of valid (unpadded) convolution outputs, `floor((size - kernel) / stride) + 1` (FFTP paper, Sec. III-A)."""
    if stride < 1 or kernel < 1:
        raise ValueError(f"Kernel and stride along the {axis_name} axis must be positive, got {kernel} / {stride}.")
    if size < kernel:
        raise ValueError(f"The {axis_name} axis has {size} bins, fewer than the patch size {kernel}.")
    return (size - kernel) // stride + 1


def patch_grid_size(
    num_mel_bins: int, num_frames: int, patch_size: int | Sequence[int], frequency_stride: int, time_stride: int
) -> tuple[int, int]:
    """`(frequency_patches, time_patches)` of the patch stem for a `num_mel_bins x num_frames` spectrogram."""
    patch_frequency, patch_time = patch_pair(patch_size)
    return (
        conv_output_length(num_mel_bins, patch_frequency, frequency_stride, "frequency"),
        conv_output_length(num_frames, patch_time, time_stride, "time"),
    )


class SpectrogramPatchEmbeddings(nn.Module):
    """Turns `input_values` of shape `(batch, frames, mel)` into patch tokens `(batch, patches, hidden_size)`.

    A `Conv2d(1, hidden_size, kernel=(F_p, T_p), stride=(s_f, s_t))` on the `(batch, 1, mel, frames)` spectrogram
    (FFTP paper, Sec. III-A). Square AST patches are `(16, 16)` with stride `(10, 10)`; FFTP patches span every mel
    bin, `F_p = s_f = num_mel_bins`, giving one token per temporal position. Tokens are ordered frequency-major
    (`index = f * time_patches + t`), as `Conv2d(...).flatten(2)` gives, which is AST's order.
    """

    def __init__(
        self,
        num_mel_bins: int,
        patch_size: int | Sequence[int],
        frequency_stride: int,
        time_stride: int,
        hidden_size: int,
    ):
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.patch_size = patch_pair(patch_size)
        self.stride = (frequency_stride, time_stride)
        self.projection = nn.Conv2d(1, hidden_size, kernel_size=self.patch_size, stride=self.stride)

    def grid_size(self, num_frames: int) -> tuple[int, int]:
        return patch_grid_size(self.num_mel_bins, num_frames, self.patch_size, *self.stride)

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if input_values.ndim != 3 or input_values.shape[-1] != self.num_mel_bins:
            raise ValueError(
                f"Expected `input_values` of shape (batch, frames, {self.num_mel_bins}) as produced by the feature "
                f"extractor, got {tuple(input_values.shape)}."
            )
        if input_values.shape[1] < self.patch_size[1]:
            raise ValueError(
                f"The input has {input_values.shape[1]} frames, fewer than the time patch size {self.patch_size[1]}."
            )
        spectrogram = input_values.unsqueeze(1).transpose(2, 3)  # (batch, 1, mel, frames)
        patches = self.projection(spectrogram.to(self.projection.weight.dtype))
        grid = (patches.shape[2], patches.shape[3])
        return patches.flatten(2).transpose(1, 2), grid


def resize_patch_position_embeddings(
    position_embeddings: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    truncate_time: bool = False,
) -> torch.Tensor:
    """Resizes patch position embeddings `(1, old_f * old_t, dim)` to `(1, new_f * new_t, dim)`.

    The embeddings are viewed as a `(dim, old_f, old_t)` image and resized with anti-aliased bilinear interpolation,
    so shrinking a grid averages neighbouring positions instead of dropping them (e.g. 12 frequency rows of a
    square-patch AST collapse into the single row of an FFTP grid). With `truncate_time=True` and the same frequency
    rows, a shorter time axis keeps the first positions unchanged (AaPE, Sec. IV-B: "embeddings are truncated" for
    shorter inputs, interpolated along time for longer ones).
    """
    if tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    old_f, old_t = old_grid
    new_f, new_t = new_grid
    dim = position_embeddings.shape[-1]
    grid = position_embeddings.reshape(1, old_f, old_t, dim).permute(0, 3, 1, 2)
    if truncate_time and new_f == old_f and new_t <= old_t:
        grid = grid[..., :new_t]
    else:
        grid = F.interpolate(
            grid.float(), size=(new_f, new_t), mode="bilinear", align_corners=False, antialias=True
        ).to(position_embeddings.dtype)
    return grid.permute(0, 2, 3, 1).reshape(1, new_f * new_t, dim)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability `drop_prob` in training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(drop_path_rate: float, num_layers: int) -> list[float]:
    """Stochastic depth rates increasing linearly from 0 to `drop_path_rate` over the layers (as in DeiT / Vim)."""
    if num_layers <= 1:
        return [drop_path_rate] * num_layers
    return [drop_path_rate * i / (num_layers - 1) for i in range(num_layers)]


def multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout: float = 0.0,
    attention_mask: torch.Tensor | None = None,
    return_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention on `(batch, heads, tokens, head_dim)` tensors.

    Uses `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels where available);
    when `return_weights` is set, the eager formula is used so that the attention probabilities can be returned.
    `attention_mask` is a boolean (True = attend) or additive float mask broadcastable to the scores.
    """
    if not return_weights:
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout)
        return output, None
    scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(F.dropout(weights, p=dropout, training=dropout > 0), value)
    return output, weights


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = True, attention_dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by the number of heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        # Read by `init_transformer_weights` (the "pytorch" scheme initialises attention as nn.MultiheadAttention).
        self.qkv.attention_role, self.proj.attention_role = "qkv", "output"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        context, weights = multi_head_attention(qkv[0], qkv[1], qkv[2], dropout, attention_mask, output_attentions)
        context = context.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj(context), weights


class FeedForward(nn.Module):
    """The two-layer MLP of a Transformer block."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class TransformerEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm ViT block: `x + DropPath(Attn(LN(x)))`, then `x + DropPath(MLP(LN(x)))` (AST / ViT / AaPE-ViT)."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-12,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attention = SelfAttention(hidden_size, num_attention_heads, qkv_bias, attention_probs_dropout_prob)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = FeedForward(hidden_size, intermediate_size, hidden_act)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, weights = self.attention(self.layernorm_before(hidden_states), attention_mask, output_attentions)
        hidden_states = hidden_states + self.drop_path(self.dropout(attention_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.dropout(mlp_output))
        return hidden_states, weights


class TransformerEncoder(nn.Module):
    """A stack of `TransformerEncoderLayer`s that optionally collects every hidden state and attention map.

    `hidden_states` holds the input embeddings followed by each layer's output (`num_layers + 1` entries), the
    transformers convention that attention rollout and layer-averaged targets rely on.
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-12,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                hidden_size,
                num_attention_heads,
                intermediate_size,
                hidden_act,
                hidden_dropout_prob,
                attention_probs_dropout_prob,
                layer_norm_eps,
                qkv_bias,
                rate,
            )
            for rate in drop_path_rates(drop_path_rate, num_layers)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, attention_mask, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden_states, all_attentions


INITIALIZER_SCHEMES = ("pytorch", "vit")


def init_transformer_weights(module: nn.Module, initializer_range: float, scheme: str = "vit") -> None:
    """Initialises the standard layers (linear and convolution weights and biases, unit LayerNorm / GroupNorm).
    Called from each model's `_init_weights`, which handles its own custom parameters.

    `scheme="pytorch"`: PyTorch's own defaults of `nn.Linear` / `nn.Conv*d` (`kaiming_uniform_(a=sqrt(5))`, i.e.
    uniform in `+-1/sqrt(fan_in)`, biases uniform in the same range) and of `nn.MultiheadAttention` for the attention
    projections (Xavier-uniform query / key / value, zero biases): the weight scale follows each layer's fan-in,
    so narrow models start with the same signal scale as wide ones (1/sqrt(3 * 768) = 0.0208 at ViT-B width, the
    same scale as the ViT value below). `scheme="vit"`: ViT / DeiT / AST's truncated normal with a fixed
    `initializer_range` whatever the width, and zero biases (right for ViT-B; too small for narrow models trained
    from scratch, see the configurations' `initializer_scheme`).
    """
    from transformers import initialization as init

    if scheme not in INITIALIZER_SCHEMES:
        raise ValueError(f"`initializer_scheme` must be one of {INITIALIZER_SCHEMES}, got {scheme!r}.")
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        attention_role = getattr(module, "attention_role", None)  # set by `SelfAttention`
        if scheme == "pytorch" and attention_role is not None:
            # What `nn.MultiheadAttention` (inside `nn.TransformerEncoderLayer`) does by default: Xavier-uniform fused
            # query / key / value weights, PyTorch's linear default for the output projection, zero biases, so that
            # our blocks start as a plain `nn.TransformerEncoderLayer` ViT does.
            if attention_role == "qkv":
                init.xavier_uniform_(module.weight)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif scheme == "pytorch":
            # What `reset_parameters()` of these layers does, through transformers' guarded init functions (so
            # weights loaded from a checkpoint are left alone).
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        else:
            init.trunc_normal_(module.weight, mean=0.0, std=initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Loss chosen by `config.problem_type`, inferred as transformers does when unset.

    `single_label_classification` -> cross-entropy on class indices (or on soft targets, e.g. after mixup, when
    `labels` has the logits' shape), `multi_label_classification` -> binary cross-entropy with logits on multi-hot
    targets (AudioSet), `regression` -> mean squared error.
    """
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int) and labels.shape == logits.shape[:-1]:
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
    if config.problem_type == "single_label_classification":
        if labels.shape == logits.shape and labels.is_floating_point():
            return F.cross_entropy(logits.float(), labels.float())
        return F.cross_entropy(logits.float().view(-1, num_labels), labels.view(-1).long())
    if config.problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"Multi-label classification expects multi-hot `labels` of shape {tuple(logits.shape)}, "
                f"got {tuple(labels.shape)}."
            )
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    raise ValueError(f"Unknown `problem_type` {config.problem_type!r}.")
