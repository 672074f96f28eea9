# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""PyTorch FFTP-AST: the Audio Spectrogram Transformer with Full-Frequency Temporal Patching (fftp-specmask.txt)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .configuration_fftp_ast import FFTPASTConfig
from .configuration_patching import patch_pair
from .modeling_layers import (
    SpectrogramPatchEmbeddings,
    TransformerEncoder,
    classification_loss,
    init_transformer_weights,
    resize_patch_position_embeddings,
)


class FFTPASTEmbeddings(nn.Module):
    """Patch tokens with AST's class and distillation tokens (the latter unless `config.use_distillation_token` is
    off) prepended and learned position embeddings added."""

    def __init__(self, config: FFTPASTConfig):
        super().__init__()
        self.config = config
        self.num_prefix_tokens = config.num_prefix_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_distillation_token else None
        )
        self.patch_embeddings = SpectrogramPatchEmbeddings(
            config.num_mel_bins, config.patch_size, config.frequency_stride, config.time_stride, config.hidden_size
        )
        self.grid_size = config.patch_grid
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_patches + self.num_prefix_tokens, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_embeddings_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a patch grid; inputs of another length than `max_length` get time-truncated
        (shorter) or time-interpolated (longer) patch position embeddings."""
        prefix = self.position_embeddings[:, : self.num_prefix_tokens]
        patches = resize_patch_position_embeddings(
            self.position_embeddings[:, self.num_prefix_tokens :], self.grid_size, grid, truncate_time=True
        )
        return torch.cat([prefix, patches], dim=1)

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        patch_tokens, grid = self.patch_embeddings(input_values)
        batch_size = patch_tokens.shape[0]
        prefix = [self.cls_token.expand(batch_size, -1, -1)]
        if self.distillation_token is not None:
            prefix.append(self.distillation_token.expand(batch_size, -1, -1))
        embeddings = torch.cat([*prefix, patch_tokens], dim=1)
        embeddings = embeddings + self.position_embeddings_for(grid)
        return self.dropout(embeddings), grid


class FFTPASTPreTrainedModel(PreTrainedModel):
    config_class = FFTPASTConfig
    config: FFTPASTConfig
    base_model_prefix = "fftp_ast"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["FFTPASTEmbeddings", "TransformerEncoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        init_transformer_weights(module, self.config.initializer_range, self.config.initializer_scheme)
        if isinstance(module, FFTPASTEmbeddings):
            # ViT / DeiT start: small random tokens and position embeddings, so positions are distinguishable.
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            if module.distillation_token is not None:
                init.trunc_normal_(module.distillation_token, std=self.config.initializer_range)
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)


class FFTPASTModel(FFTPASTPreTrainedModel):
    """The bare FFTP-AST encoder. `pooler_output` is the mean of the class and distillation tokens (as in AST), or the
    class token without a distillation token."""

    def __init__(self, config: FFTPASTConfig):
        super().__init__(config)
        self.embeddings = FFTPASTEmbeddings(config)
        self.encoder = TransformerEncoder(
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
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> SpectrogramPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        input_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised log-mel features from [`SpecPatchFeatureExtractor`].
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
        eager = output_attentions or self.config._attn_implementation == "eager"

        embeddings, _ = self.embeddings(input_values)
        sequence_output, hidden_states, attentions = self.encoder(
            embeddings, output_attentions=eager, output_hidden_states=output_hidden_states
        )
        sequence_output = self.layernorm(sequence_output)
        if self.embeddings.distillation_token is not None:
            pooled_output = (sequence_output[:, 0] + sequence_output[:, 1]) / 2
        else:
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


class AudioClassificationHead(nn.Module):
    """LayerNorm followed by a linear classifier (AST's MLP head)."""

    def __init__(self, hidden_size: int, num_labels: int, layer_norm_eps: float):
        super().__init__()
        self.layernorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dense = nn.Linear(hidden_size, num_labels) if num_labels > 0 else nn.Identity()

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled_output))


class FFTPASTForAudioClassification(FFTPASTPreTrainedModel):
    """FFTP-AST with AST's classification head (LayerNorm + Linear) on the pooled class / distillation tokens.

    The loss follows `config.problem_type`: cross-entropy for single-label data (Speech Commands), binary
    cross-entropy for multi-hot labels (AudioSet), MSE for regression.
    """

    def __init__(self, config: FFTPASTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.fftp_ast = FFTPASTModel(config)
        self.classifier = AudioClassificationHead(config.hidden_size, config.num_labels, config.layer_norm_eps)
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
            Class indices of shape `(batch_size,)` for single-label classification, or multi-hot (possibly mixed)
            targets of shape `(batch_size, num_labels)` for multi-label classification.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.fftp_ast(
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

    @classmethod
    def from_ast(cls, model_or_path, **config_overrides) -> FFTPASTForAudioClassification:
        """Converts transformers' `ASTForAudioClassification` (a model object or a checkpoint directory / hub id).

        With no overrides the result has AST's square patching and computes the same logits. Overrides such as
        `patch_size=(128, 10), frequency_stride=128, time_stride=4, max_length=1000` start an FFTP model from AST
        weights: position embeddings are interpolated to the new patch grid and the patch kernel is resized
        (bilinear, rescaled so that a constant patch gives the same response).
        """
        from transformers import ASTForAudioClassification

        if isinstance(model_or_path, (str, os.PathLike)):
            ast = ASTForAudioClassification.from_pretrained(model_or_path)
        elif isinstance(model_or_path, ASTForAudioClassification):
            ast = model_or_path
        else:
            raise ValueError(
                "`from_ast` expects an `ASTForAudioClassification` or a path / hub id of one, "
                f"got {type(model_or_path).__name__}."
            )
        ast_config = ast.config
        fields = {
            name: getattr(ast_config, name)
            for name in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "hidden_act",
                "hidden_dropout_prob",
                "attention_probs_dropout_prob",
                "initializer_range",
                "layer_norm_eps",
                "qkv_bias",
                "patch_size",
                "frequency_stride",
                "time_stride",
                "max_length",
                "num_mel_bins",
                "id2label",
                "label2id",
                "problem_type",
            )
        }
        if not config_overrides.get("use_distillation_token", True):
            raise ValueError("`from_ast` keeps AST's distillation token: `use_distillation_token=False` cannot be set.")
        config = FFTPASTConfig(**{**fields, **config_overrides, "use_distillation_token": True})
        model = cls(config)
        model.load_state_dict(_convert_ast_state_dict(ast.state_dict(), ast_config, config), strict=True)
        return model.to(next(ast.parameters()).dtype)


def _convert_ast_state_dict(ast_state: dict, ast_config, config: FFTPASTConfig) -> dict:
    """Maps transformers' AST parameter names (and shapes, where the patching changed) onto FFTP-AST's."""
    prefix = "audio_spectrogram_transformer."
    state = {}
    embeddings = prefix + "embeddings."
    state["fftp_ast.embeddings.cls_token"] = ast_state[embeddings + "cls_token"]
    state["fftp_ast.embeddings.distillation_token"] = ast_state[embeddings + "distillation_token"]

    kernel = ast_state[embeddings + "patch_embeddings.projection.weight"]
    new_kernel_size = patch_pair(config.patch_size)
    if tuple(kernel.shape[-2:]) != new_kernel_size:
        area_ratio = (kernel.shape[-2] * kernel.shape[-1]) / (new_kernel_size[0] * new_kernel_size[1])
        kernel = F.interpolate(kernel.float(), size=new_kernel_size, mode="bilinear", align_corners=False) * area_ratio
    state["fftp_ast.embeddings.patch_embeddings.projection.weight"] = kernel
    state["fftp_ast.embeddings.patch_embeddings.projection.bias"] = ast_state[embeddings + "patch_embeddings.projection.bias"]

    old_grid = (
        (ast_config.num_mel_bins - ast_config.patch_size) // ast_config.frequency_stride + 1,
        (ast_config.max_length - ast_config.patch_size) // ast_config.time_stride + 1,
    )
    position = ast_state[embeddings + "position_embeddings"]
    state["fftp_ast.embeddings.position_embeddings"] = torch.cat(
        [position[:, :2], resize_patch_position_embeddings(position[:, 2:], old_grid, config.patch_grid)], dim=1
    )

    for i in range(config.num_hidden_layers):
        old, new = f"{prefix}layers.{i}.", f"fftp_ast.encoder.layers.{i}."
        for suffix in ("weight", "bias"):
            qkv = [ast_state.get(f"{old}attention.{p}_proj.{suffix}") for p in ("q", "k", "v")]
            if all(t is not None for t in qkv):
                state[f"{new}attention.qkv.{suffix}"] = torch.cat(qkv, dim=0)
            state[f"{new}attention.proj.{suffix}"] = ast_state[f"{old}attention.o_proj.{suffix}"]
            state[f"{new}layernorm_before.{suffix}"] = ast_state[f"{old}layernorm_before.{suffix}"]
            state[f"{new}layernorm_after.{suffix}"] = ast_state[f"{old}layernorm_after.{suffix}"]
            state[f"{new}mlp.fc1.{suffix}"] = ast_state[f"{old}mlp.fc1.{suffix}"]
            state[f"{new}mlp.fc2.{suffix}"] = ast_state[f"{old}mlp.fc2.{suffix}"]
    for suffix in ("weight", "bias"):
        state[f"fftp_ast.layernorm.{suffix}"] = ast_state[f"{prefix}layernorm.{suffix}"]
        state[f"classifier.layernorm.{suffix}"] = ast_state[f"classifier.layernorm.{suffix}"]
        if f"classifier.dense.{suffix}" in ast_state:
            state[f"classifier.dense.{suffix}"] = ast_state[f"classifier.dense.{suffix}"]
    return state


__all__ = ["FFTPASTModel", "FFTPASTForAudioClassification", "FFTPASTPreTrainedModel"]
