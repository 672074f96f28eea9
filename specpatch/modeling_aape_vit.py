# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""PyTorch AaPE-ViT: a ViT audio encoder with the Aliasing-aware Patch Embedding (aape.txt) and its EAT-style
self-supervised pre-training (EMA teacher, inverse block multi-masking, cross-attention predictor, utterance and
multi-view contrastive losses).

Module map (paper section in brackets):

* `AaPEViTEmbeddings` [III-C]: standard `Conv2d` patch tokens, 2-D absolute position embeddings, and for AaPE the
  Lambda encoder (`AaPELambdaEncoder`), the SBLU (`specpatch.sblu.SBLU`) and the patch fusion (`AaPEPatchFusion`).
  Masked tokens are dropped *before* the Lambda encoder and the ViT encoder (MAE / EAT).
* `AaPEViTModel`: class token + ViT-B encoder + final LayerNorm.
* `AaPEViTForAudioClassification` [IV-B]: class token -> LayerNorm -> Linear, layer-wise lr decay groups.
* `AaPEViTForPreTraining` [III-D]: student `AaPEViTModel`, EMA teacher, `AaPEViTPredictor` and the three losses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .configuration_aape_vit import AaPEViTConfig
from .configuration_patching import patch_pair
from .masking import inverse_block_mask, mask_to_indices, sample_masked_subset
from .modeling_layers import (
    FeedForward,
    SpectrogramPatchEmbeddings,
    TransformerEncoder,
    classification_loss,
    init_transformer_weights,
    multi_head_attention,
    resize_patch_position_embeddings,
)
from .sblu import SBLU, ZeroPhaseHighPass, design_highpass_taps

# ----------------------------------------------------------------------------------------------------------------------
# Position embeddings
# ----------------------------------------------------------------------------------------------------------------------


def sincos_position_embeddings_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings `(1, F * T, dim)` for a `(F, T)` patch grid in frequency-major token
    order (`index = f * T + t`), as AudioMAE / MAE build them: the first `dim / 2` channels encode the time index,
    the last `dim / 2` the frequency index, each half as `[sin(pos * w_k), cos(pos * w_k)]` with
    `w_k = 10000^(-k / (dim / 4))`."""
    if dim % 4:
        raise ValueError(f"2-D sine-cosine position embeddings need a width divisible by 4, got {dim}.")
    num_f, num_t = grid
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None].double() * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    f_index = torch.arange(num_f).repeat_interleave(num_t)
    t_index = torch.arange(num_t).repeat(num_f)
    return torch.cat([encode(t_index), encode(f_index)], dim=1).float().unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------------------
# AaPE patch embedding (Sec. III-C)
# ----------------------------------------------------------------------------------------------------------------------


class AaPELambdaEncoder(nn.Module):
    """The Lambda encoder of Sec. III-C: estimates the SBLU decay and frequency of every patch from its standard patch
    token (with position embedding): `Linear(D -> D')` -> `L` narrow ViT blocks -> LayerNorm -> `Linear(D' -> 2H)`.
    The `2H` outputs are the raw decays (first `H`, the real part of the complex SBLU parameter) and raw
    frequencies (last `H`, the imaginary part) of the `H` SBLU channels of the token's frequency patch; the SBLU
    bounds them (`SBLU.parameters_from_tokens`).

    Being a Transformer, it runs on the visible tokens only during masked pre-training (the paper's reason for the
    choice), so masked regions cost nothing here and their content does not leak into the visible tokens' kernels.
    """

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        self.input_projection = nn.Linear(config.hidden_size, config.lambda_hidden_size)
        self.encoder = TransformerEncoder(
            config.lambda_num_layers,
            config.lambda_hidden_size,
            config.lambda_num_attention_heads,
            config.lambda_intermediate_size,
            config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            qkv_bias=config.qkv_bias,
        )
        self.layernorm = nn.LayerNorm(config.lambda_hidden_size, eps=config.layer_norm_eps)
        self.output_projection = nn.Linear(config.lambda_hidden_size, 2 * config.sblu_hidden_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _, _ = self.encoder(self.input_projection(tokens))
        return self.output_projection(self.layernorm(hidden))


class AaPEPatchFusion(nn.Module):
    """Patch fusion of Sec. III-C: the standard tokens and the SBLU tokens are layer-normalised separately,
    concatenated and projected back to the encoder width, `Linear(D + D_o -> D)`."""

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        self.standard_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.sblu_norm = nn.LayerNorm(config.sblu_output_dim, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.hidden_size + config.sblu_output_dim, config.hidden_size)

    def forward(self, standard_tokens: torch.Tensor, sblu_tokens: torch.Tensor) -> torch.Tensor:
        fused = torch.cat(
            [self.standard_norm(standard_tokens), self.sblu_norm(sblu_tokens.to(standard_tokens.dtype))], -1
        )
        return self.projection(fused)


def _gather_tokens(tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """`tokens[r, index[r]]` for `(rows, N, dim)` tokens and `(rows, n)` indices (identity for `index=None`)."""
    if index is None:
        return tokens
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


class AaPEViTEmbeddings(nn.Module):
    """Patch tokens, position embeddings and (optionally) the class token of AaPE-ViT.

    `patch_embedding_type`:

    * `"standard"`: `Conv2d(1, D, p, stride=p)` tokens `P` + position embeddings `E`;
    * `"aape_nonadaptive"`: `Fusion(P, SBLU(x)) + E` with SBLU decay / frequency learned and fixed across time;
    * `"aape"`: `Fusion(P, SBLU(x; Lambda(P + E))) + E` with decay / frequency estimated per patch (Sec. III-C).

    The "patch embedding" whose parameters the paper counts (0.43M / 1.16M / 1.86M, Tables V-VI) is everything here
    but the class token: for the standard stem the 0.43M are the `Conv2d` (16 * 16 * 768 + 768 = 197,376) plus the
    304 x 768 position embeddings (233,472), 430,848 in all (see `num_patch_embedding_parameters`).
    """

    def __init__(self, config: AaPEViTConfig, use_class_token: bool = True):
        super().__init__()
        self.config = config
        self.patch_embedding_type = config.patch_embedding_type
        patch_frequency, patch_time = patch_pair(config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_class_token else None
        self.patch_embeddings = SpectrogramPatchEmbeddings(
            config.num_mel_bins, (patch_frequency, patch_time), patch_frequency, patch_time, config.hidden_size
        )
        self.grid_size = config.patch_grid
        # Fixed sin-cos embeddings are a non-trainable parameter (as in AudioMAE / MAE) so that they are saved with
        # the checkpoint, follow `.to()` and are interpolated like learned ones.
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_patches, config.hidden_size),
            requires_grad=config.position_embedding_type == "learned",
        )
        self.lambda_encoder = AaPELambdaEncoder(config) if config.patch_embedding_type == "aape" else None
        if config.uses_sblu:
            self.sblu = SBLU(
                num_mel_bins=config.num_mel_bins,
                patch_size=(patch_frequency, patch_time),
                hidden_channels=config.sblu_hidden_channels,
                kernel_size=config.sblu_kernel_size,
                stride=config.sblu_stride,
                output_dim=config.sblu_output_dim,
                attenuation_eps=config.sblu_attenuation_eps,
                highpass_taps=config.sblu_highpass_taps,
                adaptive=config.patch_embedding_type == "aape",
            )
            self.fusion = AaPEPatchFusion(config)
        else:
            self.sblu = self.fusion = None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def num_patch_embedding_parameters(self) -> int:
        """Parameters of the patch embedding as the paper counts them: everything but the class token."""
        return sum(p.numel() for name, p in self.named_parameters() if name != "cls_token")

    def grid_for(self, num_frames: int) -> tuple[int, int]:
        """Patch grid `(frequency_patches, time_patches)` of an input with `num_frames` frames."""
        return self.patch_embeddings.grid_size(num_frames)

    def position_embeddings_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings `(1, F * T, D)` for a patch grid: truncated along time for shorter inputs, linearly
        interpolated along time for longer ones, frequency unchanged (Sec. IV-B)."""
        table = self.position_embeddings
        if self.config.position_embedding_type == "sincos":
            table = table.detach()  # fixed, whatever `requires_grad` says
        return resize_patch_position_embeddings(table, self.grid_size, grid, truncate_time=True)

    def forward(
        self, input_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """
        Args:
            input_values (`torch.Tensor` of shape `(batch, frames, num_mel_bins)`): normalised log-mel.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch * views, patches)`, *optional*): `True` marks a
                masked token; masked tokens are dropped (every row must mask the same number). With
                `views > 1` rows `i * views .. (i + 1) * views - 1` are the views of clip `i`.

        Returns:
            `(embeddings, grid)`: `(rows, [1 +] visible, D)` tokens (class token first if the module has one) and
            the full patch grid.
        """
        patch_tokens, grid = self.patch_embeddings(input_values)
        batch, num_patches, _ = patch_tokens.shape
        position = self.position_embeddings_for(grid).to(patch_tokens.dtype)
        visible_index, num_views = None, 1
        if bool_masked_pos is not None:
            if (
                bool_masked_pos.ndim != 2
                or bool_masked_pos.shape[1] != num_patches
                or bool_masked_pos.shape[0] % batch
            ):
                raise ValueError(
                    f"`bool_masked_pos` must have shape (batch * views, {num_patches}) for {batch} clips of grid "
                    f"{grid}, got {tuple(bool_masked_pos.shape)}."
                )
            num_views = bool_masked_pos.shape[0] // batch
            visible_index, _ = mask_to_indices(bool_masked_pos.to(patch_tokens.device))
        rows = batch * num_views
        # The patch stem runs once per clip; its tokens are shared by the clip's views.
        standard = _gather_tokens(patch_tokens.repeat_interleave(num_views, 0), visible_index)
        position = _gather_tokens(position.expand(rows, -1, -1), visible_index)

        if self.sblu is None:
            embeddings = standard + position
        else:
            spectrogram = input_values.transpose(1, 2)  # (batch, mel, frames), the SBLU's layout
            # `masked_sblu_input="visible"`: each view's SBLU sees only its visible patches (masked ones zeroed,
            # GroupNorm statistics over visible frames), so masked content cannot reach its visible tokens.
            visible_patches = None
            if bool_masked_pos is not None and self.config.masked_sblu_input == "visible":
                visible_patches = ~bool_masked_pos.to(spectrogram.device).view(rows, *grid)
            per_view = num_views > 1 and (self.lambda_encoder is not None or visible_patches is not None)
            if per_view:
                spectrogram = spectrogram.repeat_interleave(num_views, 0)
            if self.lambda_encoder is not None:
                raw = self.lambda_encoder(standard + position)  # visible tokens only
                if visible_index is not None:
                    # Masked positions get fixed neutral raw values (0: mid-band frequency, decay softplus(0) +
                    # alpha_min), so that nothing masked enters the SBLU through them.
                    raw = raw.new_zeros(rows, num_patches, raw.shape[-1]).scatter(
                        1, visible_index[..., None].expand(-1, -1, raw.shape[-1]), raw
                    )
                decay, frequency = self.sblu.parameters_from_tokens(raw)
                sblu_tokens = self.sblu(spectrogram, decay, frequency, visible_patches=visible_patches)
            else:
                sblu_tokens = self.sblu(spectrogram, visible_patches=visible_patches)
                if num_views > 1 and not per_view:
                    sblu_tokens = sblu_tokens.repeat_interleave(num_views, 0)  # the same for every view of a clip
            embeddings = self.fusion(standard, _gather_tokens(sblu_tokens, visible_index)) + position

        if self.cls_token is not None:
            embeddings = torch.cat([self.cls_token.to(embeddings.dtype).expand(rows, -1, -1), embeddings], dim=1)
        return self.dropout(embeddings), grid


# ----------------------------------------------------------------------------------------------------------------------
# Base classes
# ----------------------------------------------------------------------------------------------------------------------


class AaPEViTPreTrainedModel(PreTrainedModel):
    config_class = AaPEViTConfig
    config: AaPEViTConfig
    base_model_prefix = "aape_vit"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["AaPEViTEmbeddings", "TransformerEncoderLayer", "AaPECrossAttentionLayer"]
    # A pre-training checkpoint loads into the encoder and classification models; its teacher and pre-training heads
    # are not needed there.
    _keys_to_ignore_on_load_unexpected = [
        r"^teacher\.",
        r"^predictor\.",
        r"^utterance_projection\.",
        r"^contrastive_head\.",
    ]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        init_transformer_weights(module, std, self.config.initializer_scheme)
        if isinstance(module, AaPEViTEmbeddings):
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, std=std)
            if self.config.position_embedding_type == "sincos":
                init.copy_(
                    module.position_embeddings,
                    sincos_position_embeddings_2d(self.config.hidden_size, module.grid_size),
                )
            else:
                init.trunc_normal_(module.position_embeddings, std=std)
            # Sub-modules without parameters of their own (adaptive SBLU, Lambda encoder) are skipped by
            # transformers' initialisation of custom code, so the embeddings initialise them here, after their
            # children got the generic initialisation.
            if module.sblu is not None:
                # The SBLU's own scheme (B / C maps, patch averaging, band-spread fixed kernels); its `torch.nn.init`
                # calls are guarded by transformers, so weights loaded from a checkpoint are kept.
                module.sblu.reset_parameters()
            if module.lambda_encoder is not None:
                # Every patch starts at the non-adaptive SBLU's initial kernels: decay 2 * alpha_min and the H
                # frequencies spread over the band (raw values softplus^-1(alpha_min) and logit of bin centres).
                bias = module.lambda_encoder.output_projection.bias
                hidden = self.config.sblu_hidden_channels
                alpha_min = module.sblu.decay_min
                centres = (torch.arange(hidden, dtype=torch.float64) + 0.5) / hidden
                raw_decay = torch.full((hidden,), math.log(math.expm1(alpha_min)), dtype=torch.float64)
                init.copy_(bias, torch.cat([raw_decay, torch.logit(centres)]).to(bias))
        elif isinstance(module, ZeroPhaseHighPass):
            # Non-persistent buffer: not in checkpoints, so it must be rebuilt when a model is loaded on meta device.
            init.copy_(module.taps, torch.as_tensor(design_highpass_taps(module.cutoff, module.num_taps)))
        elif isinstance(module, AaPEViTPredictor):
            init.trunc_normal_(module.mask_token, std=std)
            if self.config.position_embedding_type == "sincos":
                init.copy_(
                    module.position_embeddings,
                    sincos_position_embeddings_2d(self.config.predictor_hidden_size, module.grid_size),
                )
            else:
                init.trunc_normal_(module.position_embeddings, std=std)

    def _freeze_fixed_parameters(self) -> None:
        """Fixed sin-cos position embeddings and the EMA teacher never train: `requires_grad=False`."""
        for module in self.modules():
            if isinstance(module, AaPEViTTeacher):
                module.requires_grad_(False)
            elif isinstance(module, (AaPEViTEmbeddings, AaPEViTPredictor)):
                module.position_embeddings.requires_grad_(self.config.position_embedding_type == "learned")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then fixed parameters are frozen again (loading makes every parameter
        trainable)."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_fixed_parameters()
        return loaded

    def get_layer_id(self, name: str) -> int:
        """Layer id of a parameter for layer-wise learning-rate decay (BEiT): 0 for the embeddings (class token,
        patch embedding with SBLU / Lambda encoder, position embeddings), `i + 1` for encoder layer `i`, and
        `num_hidden_layers + 1` for everything after the encoder (final LayerNorm, heads)."""
        match = re.search(r"(?:^|\.)encoder\.layers\.(\d+)\.", name)
        if match and "lambda_encoder" not in name:
            return int(match.group(1)) + 1
        if re.search(r"(?:^|\.)embeddings\.", name):
            return 0
        return self.config.num_hidden_layers + 1

    def get_layerwise_lr_decay_groups(
        self, learning_rate: float, weight_decay: float = 0.05, layer_decay: float = 0.75
    ) -> list[dict]:
        """Optimizer parameter groups with layer-wise learning-rate decay (BEiT; Table I uses 0.65 to 0.75).

        Layer `l` of `L + 1` (see `get_layer_id`) gets `lr = learning_rate * layer_decay ** (L + 1 - l)`. Biases, norm
        weights, the class token and position embeddings (every parameter with fewer than 2 dimensions or a
        token / position name) get no weight decay. Frozen parameters are left out. Each group also carries its
        `lr_scale`, for schedulers that rescale a base learning rate.
        """
        num_layers = self.config.num_hidden_layers + 1
        groups: dict[tuple[int, bool], dict] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            no_decay = (
                parameter.ndim < 2 or "cls_token" in name or "position_embeddings" in name or "mask_token" in name
            )
            layer_id = self.get_layer_id(name)
            scale = layer_decay ** (num_layers - layer_id)
            group = groups.setdefault(
                (layer_id, no_decay),
                {
                    "params": [],
                    "lr": learning_rate * scale,
                    "weight_decay": 0.0 if no_decay else weight_decay,
                    "lr_scale": scale,
                    "layer_id": layer_id,
                },
            )
            group["params"].append(parameter)
        return [groups[key] for key in sorted(groups)]


class AaPEViTModel(AaPEViTPreTrainedModel):
    """The bare AaPE-ViT encoder: class token + patch tokens -> ViT encoder -> final LayerNorm. `pooler_output` is the
    class token.

    With `bool_masked_pos` (`True` = masked, the same count per row), masked tokens are dropped before the Lambda
    encoder and the ViT encoder, as MAE / EAT do; `bool_masked_pos` may hold several masks (views) per clip, then
    the outputs have `batch * views` rows.
    """

    def __init__(self, config: AaPEViTConfig):
        super().__init__(config)
        self.embeddings = AaPEViTEmbeddings(config)
        self.encoder = _build_encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> SpectrogramPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        input_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised log-mel features (from [`SpecPatchFeatureExtractor`]).
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size * views, num_patches)`, *optional*):
            Tokens to drop (`True`); see the class docstring.
        output_attentions (`bool`, *optional*):
            Return every layer's attention probabilities; those layers run the eager attention path.
        output_hidden_states (`bool`, *optional*):
            Return the embeddings and every layer's output.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_values.ndim != 3 or input_values.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"Expected `input_values` of shape (batch, frames, {self.config.num_mel_bins}), got "
                f"{tuple(input_values.shape)}."
            )
        eager = output_attentions or self.config._attn_implementation == "eager"
        embeddings, _ = self.embeddings(input_values, bool_masked_pos)
        sequence_output, hidden_states, attentions = self.encoder(
            embeddings, output_attentions=eager, output_hidden_states=output_hidden_states
        )
        sequence_output = self.layernorm(sequence_output)
        pooled_output = sequence_output[:, 0]
        attentions = attentions if output_attentions else None
        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, hidden_states, attentions) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=hidden_states,
            attentions=attentions,
        )

    @torch.no_grad()
    def get_probe_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Linear-probing features (Sec. IV-B): the class token concatenated with the mean of the patch tokens, both
        after the final LayerNorm, shape `(batch, 2 * hidden_size)`. Computed without gradients (frozen encoder);
        standardise them with training-set statistics before the linear classifier."""
        hidden = self(input_values, return_dict=True).last_hidden_state
        return torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1)


def _build_encoder(config: AaPEViTConfig) -> TransformerEncoder:
    return TransformerEncoder(
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.hidden_act,
        config.hidden_dropout_prob,
        config.attention_probs_dropout_prob,
        config.layer_norm_eps,
        config.qkv_bias,
        config.drop_path_rate,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Classification (Sec. IV-B fine-tuning)
# ----------------------------------------------------------------------------------------------------------------------


class AaPEViTClassificationHead(nn.Module):
    """LayerNorm followed by a linear classifier on the class token (EAT's fine-tuning head)."""

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled_output))


class AaPEViTForAudioClassification(AaPEViTPreTrainedModel):
    """AaPE-ViT with a classification head (LayerNorm + Linear) on the class token.

    Loads a pre-training checkpoint directly: `AaPEViTForAudioClassification.from_pretrained(pretraining_dir,
    num_labels=...)` takes the student encoder and starts a fresh head (teacher and predictor are ignored). The loss
    follows `config.problem_type` (cross-entropy, BCE for multi-hot / mixup targets, MSE). For fine-tuning with
    layer-wise lr decay use `get_layerwise_lr_decay_groups`.
    """

    def __init__(self, config: AaPEViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.aape_vit = AaPEViTModel(config)
        self.classifier = AaPEViTClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        labels (`torch.Tensor`, *optional*):
            Class indices `(batch_size,)` for single-label classification, or multi-hot / mixed targets
            `(batch_size, num_labels)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.aape_vit(
            input_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        if not return_dict:
            output = tuple(v for v in (logits, outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def get_probe_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Linear-probing features of the encoder, see [`AaPEViTModel.get_probe_features`]."""
        return self.aape_vit.get_probe_features(input_values)


# ----------------------------------------------------------------------------------------------------------------------
# Pre-training (Sec. III-D)
# ----------------------------------------------------------------------------------------------------------------------


class AaPECrossAttention(nn.Module):
    """Multi-head cross-attention: queries of width `P` attend to context tokens of width `D`, which every block
    projects to keys and values of width `P` itself (CrossMAE)."""

    def __init__(self, hidden_size: int, context_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.key_value = nn.Linear(context_size, 2 * hidden_size, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        rows, num_queries, _ = queries.shape
        query = self.query(queries).view(rows, num_queries, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = (
            self.key_value(context)
            .view(rows, context.shape[1], 2, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        output, _ = multi_head_attention(query, key, value)
        return self.proj(output.transpose(1, 2).reshape(rows, num_queries, -1))


class AaPECrossAttentionLayer(GradientCheckpointingLayer):
    """Pre-norm cross-attention block of the predictor: `q + CrossAttn(LN(q), context)`, then `x + MLP(LN(x))`.
    Queries never attend to each other (Sec. III-D)."""

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        width = config.predictor_hidden_size
        self.layernorm_before = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attention = AaPECrossAttention(
            width, config.hidden_size, config.predictor_num_attention_heads, config.qkv_bias
        )
        self.layernorm_after = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = FeedForward(width, config.predictor_intermediate_size, config.hidden_act)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        queries = queries + self.attention(self.layernorm_before(queries), context)
        return queries + self.mlp(self.layernorm_after(queries))


class AaPEViTPredictor(nn.Module):
    """The 3-block cross-attention predictor (Sec. III-D, CrossMAE): queries are a learned mask token plus the
    position embedding of a queried (masked) position, keys / values the visible student tokens (after the encoder's
    final LayerNorm, class token excluded). A LayerNorm and `Linear(P -> D)` map the queries to teacher-target
    space."""

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        width = config.predictor_hidden_size
        self.grid_size = config.patch_grid
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.learned_positions = config.position_embedding_type == "learned"
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_patches, width), requires_grad=config.position_embedding_type == "learned"
        )
        self.layers = nn.ModuleList(AaPECrossAttentionLayer(config) for _ in range(config.predictor_num_layers))
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.head = nn.Linear(width, config.hidden_size)

    def forward(self, context: torch.Tensor, query_positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """`context` `(rows, visible, D)`, `query_positions` `(rows, queries)` token indices -> `(rows, queries, D)`."""
        table = self.position_embeddings if self.learned_positions else self.position_embeddings.detach()
        position = resize_patch_position_embeddings(table, self.grid_size, grid, truncate_time=True)
        rows = query_positions.shape[0]
        queries = self.mask_token + _gather_tokens(position.to(context.dtype).expand(rows, -1, -1), query_positions)
        for layer in self.layers:
            queries = layer(queries, context)
        return self.head(self.layernorm(queries))


class AaPEContrastiveHead(nn.Module):
    """Contrastive projection of Sec. III-D: `Linear(D -> D/2)` -> GELU -> `Linear(D/2 -> out)`, L2-normalised."""

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.hidden_size // 2)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.hidden_size // 2, config.contrastive_projection_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(self.act(self.fc1(pooled))).float(), dim=-1)


class AaPEViTTeacher(nn.Module):
    """The EMA teacher: the student's patch embedding and encoder without class token (EAT), never trained by
    gradients. Its parameter names equal the student's (`embeddings.*`, `encoder.*`)."""

    def __init__(self, config: AaPEViTConfig):
        super().__init__()
        self.embeddings = AaPEViTEmbeddings(config, use_class_token=False)
        self.encoder = _build_encoder(config)

    def layer_outputs(self, input_values: torch.Tensor, layer_output: str = "ffn") -> list[torch.Tensor]:
        """Per-block outputs `(batch, patches, D)` of the unmasked input, first block first. `layer_output="ffn"`: each
        block's feed-forward output before the residual add (data2vec 2.0 / EAT `AltBlock` with `ffn_targets`, read
        with forward hooks on the blocks' MLPs); `"block"`: each block's output (the residual stream)."""
        embeddings, _ = self.embeddings(input_values)
        if layer_output == "block":
            _, hidden_states, _ = self.encoder(embeddings, output_hidden_states=True)
            return list(hidden_states[1:])
        if layer_output != "ffn":
            raise ValueError(f"`layer_output` must be 'ffn' or 'block', got {layer_output!r}.")
        outputs: list[torch.Tensor] = []
        handles = [
            layer.mlp.register_forward_hook(lambda module, args, output: outputs.append(output))
            for layer in self.encoder.layers
        ]
        try:
            self.encoder(embeddings)
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    def forward(
        self,
        input_values: torch.Tensor,
        instance_norm_axis: str = "tokens",
        layer_output: str = "ffn",
        top_k_layers: int | None = None,
    ) -> torch.Tensor:
        """Teacher targets `(batch, patches, D)` of the unmasked input: the last `top_k_layers` (all for `None`) block
        outputs of kind `layer_output`, combined by `teacher_targets_from_layers`."""
        outputs = self.layer_outputs(input_values, layer_output)
        return teacher_targets_from_layers(outputs[-(top_k_layers or len(outputs)) :], instance_norm_axis)


def teacher_targets_from_layers(layer_outputs, instance_norm_axis: str = "tokens") -> torch.Tensor:
    """Teacher targets of Sec. III-D (data2vec 2.0 / EAT `make_targets`): every layer's tokens instance-normalised
    without affine parameters, averaged over the layers, then layer-normalised without affine parameters (float32).

    `instance_norm_axis="channels"` normalises each token over its channels (the paper's wording);
    `"tokens"` normalises each channel over the tokens of a clip (data2vec 2.0's `instance_norm_target_layer`).
    """
    if instance_norm_axis not in ("channels", "tokens"):
        raise ValueError(f"`instance_norm_axis` must be 'channels' or 'tokens', got {instance_norm_axis!r}.")
    total = None
    for output in layer_outputs:
        output = output.float()
        if instance_norm_axis == "channels":
            normed = F.layer_norm(output, output.shape[-1:])
        else:
            normed = F.instance_norm(output.transpose(1, 2)).transpose(1, 2)
        total = normed if total is None else total + normed
    average = total / len(layer_outputs)
    return F.layer_norm(average, average.shape[-1:])


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient for this process's rows (the "GatherLayer" of SimCLR
    / CLIP training code; what `torch.distributed.nn.functional.all_gather`, now deprecated, computes)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = torch.distributed.get_rank(), tensor.shape[0]
        pieces = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(pieces, tensor.contiguous())
        return torch.cat(pieces, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_gradient(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All rows of `tensor` from every process, concatenated in rank order, with gradient flowing back to every
    process's rows (SimCLR / CLIP gather their negatives so). Returns `(gathered, start)`, `start` being the first
    row of this process's own rows. Processes may hold different row counts (rows are padded for the collective).
    Without an initialised process group of more than one process it returns `(tensor, 0)`."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor, 0
    world = torch.distributed.get_world_size()
    if world == 1:
        return tensor, 0
    count = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    torch.distributed.all_gather(counts, count)
    counts = [int(c) for c in counts]
    largest = max(counts)
    padded = F.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, largest - tensor.shape[0]))
    pieces = _GatherWithGradient.apply(padded).split(largest, 0)
    gathered = torch.cat([piece[:n] for piece, n in zip(pieces, counts)], dim=0)
    return gathered, sum(counts[: torch.distributed.get_rank()])


def multi_view_info_nce(
    embeddings: torch.Tensor,
    num_views: int,
    temperature: float,
    anchor_start: int = 0,
    num_anchors: int | None = None,
) -> torch.Tensor:
    """Multi-positive InfoNCE of Eq. (5) over `N = clips * views` L2-normalised embeddings (rows `i * views + v`).

    For an anchor `i` and each positive `p` (another view of the same clip) the term is
    `-log(exp(s_ip / t) / (exp(s_ip / t) + sum_{n in other clips} exp(s_in / t)))`: the anchor and the other views
    of its clip are left out of the denominator. Terms are averaged over the positives of an anchor, then over the
    anchors. Zero when there is a single view (no positives) or a single clip (no negatives).

    The anchors are rows `anchor_start .. anchor_start + num_anchors - 1` (default: all) of `embeddings`, every row
    serving as positive or negative: with embeddings gathered from every process (`gather_with_gradient`) each
    process scores its own anchors against the global batch, and the mean over processes is the global loss.
    """
    rows = embeddings.shape[0]
    num_anchors = rows - anchor_start if num_anchors is None else num_anchors
    if num_views < 2 or rows // num_views < 2 or num_anchors == 0:
        return embeddings.new_zeros(()).float() + 0.0 * embeddings.sum()
    embeddings = embeddings.float()
    anchors = embeddings[anchor_start : anchor_start + num_anchors]
    similarity = anchors @ embeddings.T / temperature
    clip = torch.arange(rows, device=embeddings.device) // num_views
    anchor_clip = clip[anchor_start : anchor_start + num_anchors]
    same_clip = anchor_clip[:, None] == clip[None, :]
    anchor_index = torch.arange(anchor_start, anchor_start + num_anchors, device=embeddings.device)
    positive = same_clip & (anchor_index[:, None] != torch.arange(rows, device=embeddings.device)[None, :])
    negatives = torch.logsumexp(similarity.masked_fill(same_clip, float("-inf")), dim=1, keepdim=True)
    pair_loss = torch.logaddexp(similarity, negatives) - similarity
    per_anchor = (pair_loss * positive).sum(1) / (num_views - 1)
    return per_anchor.mean()


@dataclass
class AaPEViTForPreTrainingOutput(ModelOutput):
    """Output of [`AaPEViTForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): `masked_loss + utterance_loss_weight * utterance_loss +
            contrastive_weight * contrastive_loss` (Eq. 6).
        masked_loss (`torch.FloatTensor` of shape `()`): L2 between predictor outputs and teacher targets at the
            queried masked positions.
        utterance_loss (`torch.FloatTensor` of shape `()`): L2 between the student class token (projected when
            `config.utterance_projection`) and the mean teacher target of the clip, reduced over the rows by
            `config.utterance_loss_reduction`.
        contrastive_loss (`torch.FloatTensor` of shape `()`): multi-view InfoNCE (Eq. 5), negatives from the whole
            global batch with `config.contrastive_negatives="global"`.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch * views, patches)`): the masks used.
        query_positions (`torch.LongTensor` of shape `(batch * views, queries)`): the masked positions queried.
    """

    loss: torch.FloatTensor | None = None
    masked_loss: torch.FloatTensor | None = None
    utterance_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    query_positions: torch.LongTensor | None = None


class AaPEViTForPreTraining(AaPEViTPreTrainedModel):
    """AaPE-ViT self-supervised pre-training (Sec. III-D, IV-B), EAT-style teacher-student.

    Per step: `forward(input_values)` draws `num_views` inverse block masks per clip, runs the teacher once per clip
    on the unmasked input, the student on the visible tokens of every view, the predictor on 75 % of the masked
    positions, and returns the loss and every term. After `optimizer.step()` call `update_teacher(step,
    total_steps)` (EMA with DINOv2's cosine momentum schedule). The student is `self.aape_vit`, so a saved
    checkpoint loads into `AaPEViTForAudioClassification` / `AaPEViTModel` directly.
    """

    def __init__(self, config: AaPEViTConfig):
        super().__init__(config)
        self.aape_vit = AaPEViTModel(config)
        self.teacher = AaPEViTTeacher(config)
        self.predictor = AaPEViTPredictor(config)
        # EAT compares the class token itself with the utterance target; the projection is an option (old default).
        self.utterance_projection = (
            nn.Linear(config.hidden_size, config.hidden_size) if config.utterance_projection else None
        )
        self.contrastive_head = AaPEContrastiveHead(config)
        self.post_init()
        self._freeze_fixed_parameters()
        self.teacher.eval()

    @torch.no_grad()
    def initialize_weights(self):
        """Initialises what was not loaded, then makes the teacher an exact copy of the student. `init.copy_` skips
        teacher weights loaded from a checkpoint and copies the (loaded) student into a teacher that the checkpoint
        did not have, e.g. when pre-training continues from an encoder-only checkpoint."""
        super().initialize_weights()
        student = dict(self.aape_vit.named_parameters())
        for name, parameter in self.teacher.named_parameters():
            init.copy_(parameter, student[name])

    def train(self, mode: bool = True):
        """The teacher always runs in evaluation mode (no dropout / drop path), whatever the student does."""
        super().train(mode)
        self.teacher.eval()
        return self

    def ema_momentum(self, step: int, total_steps: int) -> float:
        """DINOv2's cosine schedule: `m = m_end - (m_end - m_start) * (1 + cos(pi * step / total_steps)) / 2`, from
        `ema_momentum_start` at step 0 to `ema_momentum_end` at `total_steps` (clamped outside)."""
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be positive, got {total_steps}.")
        progress = min(max(step / total_steps, 0.0), 1.0)
        start, end = self.config.ema_momentum_start, self.config.ema_momentum_end
        return end - (end - start) * (1.0 + math.cos(math.pi * progress)) / 2.0

    @torch.no_grad()
    def update_teacher(self, step: int, total_steps: int) -> float:
        """EMA update `teacher = m * teacher + (1 - m) * student` with `m = ema_momentum(step, total_steps)`; returns
        `m`. Call once per optimizer step."""
        momentum = self.ema_momentum(step, total_steps)
        student = dict(self.aape_vit.named_parameters())
        teacher_params, student_params = [], []
        for name, parameter in self.teacher.named_parameters():
            teacher_params.append(parameter)
            student_params.append(student[name].detach().to(parameter.dtype))
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
        return momentum

    @torch.no_grad()
    def teacher_targets(self, input_values: torch.Tensor) -> torch.Tensor:
        """Teacher targets `(batch, patches, D)` of the unmasked clips (float32, no gradient)."""
        return self._teacher_targets(input_values)[0]

    @torch.no_grad()
    def _teacher_targets(self, input_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch targets `(batch, patches, D)` and utterance targets `(batch, D)`: the mean of the patch targets (EAT),
        or of targets normalised over `config.utterance_target_instance_norm_axis` when that is set."""
        config = self.config
        outputs = self.teacher.layer_outputs(input_values, config.teacher_target_layer_output)
        outputs = outputs[-(config.teacher_average_top_k_layers or len(outputs)) :]
        targets = teacher_targets_from_layers(outputs, config.teacher_instance_norm_axis)
        axis = config.utterance_target_instance_norm_axis
        if axis is None or axis == config.teacher_instance_norm_axis:
            return targets, targets.mean(1)
        return targets, teacher_targets_from_layers(outputs, axis).mean(1)

    def forward(
        self,
        input_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        query_positions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AaPEViTForPreTrainingOutput | tuple:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised log-mel crops (608 frames in the paper).
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size * views, num_patches)`, *optional*):
            Masks (`True` = masked, the same count per row). Default: `config.num_views` inverse block masks per
            clip with `config.mask_ratio`.
        query_positions (`torch.LongTensor` of shape `(batch_size * views, queries)`, *optional*):
            Masked positions the predictor queries. Default: a random `predictor_query_ratio` of the masked ones.
        generator (`torch.Generator`, *optional*):
            CPU generator for the random masks and queries (reproducible runs).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        batch = input_values.shape[0]
        grid = self.aape_vit.embeddings.grid_for(input_values.shape[1])
        if bool_masked_pos is None:
            bool_masked_pos = inverse_block_mask(
                batch,
                grid,
                config.mask_ratio,
                config.num_views,
                config.mask_block_size_range,
                generator,
                device=input_values.device,
                mask_prob_adjust=config.mask_prob_adjust,
                placement=config.mask_block_placement,
            )
        num_views = bool_masked_pos.shape[0] // batch
        _, masked_index = mask_to_indices(bool_masked_pos)
        if query_positions is None:
            query_positions = sample_masked_subset(masked_index, config.predictor_query_ratio, generator)
        query_positions = query_positions.to(input_values.device)

        targets, utterance_targets = self._teacher_targets(input_values)  # once per clip
        student = self.aape_vit(input_values, bool_masked_pos=bool_masked_pos, return_dict=True).last_hidden_state
        class_token, visible_tokens = student[:, 0], student[:, 1:]
        clip = torch.arange(batch * num_views, device=input_values.device) // num_views
        scale = (
            config.regression_loss_scale
            if config.regression_loss_scale is not None
            else 1.0 / math.sqrt(config.hidden_size)
        )

        predictions = self.predictor(visible_tokens, query_positions, grid)
        query_targets = targets[clip[:, None], query_positions]
        masked_loss = (predictions.float() - query_targets).square().sum(-1).mean() * scale

        # Utterance loss: the class token against the mean teacher target of its clip (EAT `cls_loss`).
        utterance = class_token if self.utterance_projection is None else self.utterance_projection(class_token)
        utterance_errors = (utterance.float() - utterance_targets[clip]).square().sum(-1) * scale
        if config.utterance_loss_reduction == "sum":
            utterance_loss = utterance_errors.sum()  # EAT's effective weight, see the config field
        else:
            utterance_loss = utterance_errors.mean()

        embeddings = self.contrastive_head(visible_tokens.mean(1))
        anchor_start = 0
        if config.contrastive_negatives == "global":
            embeddings, anchor_start = gather_with_gradient(embeddings)
        contrastive_loss = multi_view_info_nce(
            embeddings, num_views, config.contrastive_temperature, anchor_start, batch * num_views
        )
        loss = (
            masked_loss + config.utterance_loss_weight * utterance_loss + config.contrastive_weight * contrastive_loss
        )
        if not return_dict:
            return (loss, masked_loss, utterance_loss, contrastive_loss, bool_masked_pos, query_positions)
        return AaPEViTForPreTrainingOutput(
            loss=loss,
            masked_loss=masked_loss,
            utterance_loss=utterance_loss,
            contrastive_loss=contrastive_loss,
            bool_masked_pos=bool_masked_pos,
            query_positions=query_positions,
        )


__all__ = [
    "AaPEViTForAudioClassification",
    "AaPEViTForPreTraining",
    "AaPEViTForPreTrainingOutput",
    "AaPEViTModel",
    "AaPEViTPreTrainedModel",
]
