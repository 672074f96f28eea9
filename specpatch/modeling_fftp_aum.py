# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""PyTorch FFTP-AuM: bidirectional Audio Mamba with Full-Frequency Temporal Patching (fftp-specmask.txt).

The encoder follows the published Audio Mamba (kaistmm/Audio-Mamba-AuM, a Vision-Mamba-style model): patch tokens
with one class token in the middle of the sequence and learned position embeddings, then Vim residual blocks
(add -> RMSNorm -> bidirectional Mamba mixer, residual stream in float32), a final add + RMSNorm and a linear head
on the class token. The selective scan runs on any device (`selective_scan.py`); `mamba_ssm` / `causal_conv1d`
kernels are used automatically on CUDA when they are installed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .configuration_fftp_aum import BIMAMBA_TYPES, FFTPAuMConfig
from .modeling_layers import (
    DropPath,
    SpectrogramPatchEmbeddings,
    classification_loss,
    drop_path_rates,
    init_transformer_weights,
    resize_patch_position_embeddings,
)
from .selective_scan import causal_conv1d, selective_scan


class FFTPAuMRMSNorm(nn.Module):
    """Root-mean-square normalisation (computed in float32, returned in the input dtype), as in Mamba / Vim."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * hidden_states).to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class FFTPAuMMixer(nn.Module):
    """The (bidirectional) Mamba mixer of Audio Mamba.

    One direction is Mamba's selective SSM block (Mamba paper, Fig. 3): `in_proj` to `(x, z)`, a depthwise causal
    `conv1d` + SiLU on `x`, input-dependent `(dt, B, C)` from `x_proj` / `dt_proj`, the selective scan with
    `A = -exp(A_log)` and skip `D`, gating by `silu(z)`, then `out_proj`. Sub-module names are those of
    transformers' `MambaMixer` (and of Vim / AuM for the backward branch), so weights map one to one.

    `bimamba_type`:
      * `"fo-bi"` (Vim "v1"): convolution and projections are computed once; a second scan with its own `A_b_log`
        (and the shared `D`) runs on the time-flipped `(x, dt, B, C, z)`; the two outputs are summed.
      * `"bi-bi"` (Vim "v2" with `if_devide_out`): the flipped input goes through its own `conv1d_b`, `x_proj_b`,
        `dt_proj_b`, `A_b_log`, `D_b`; `in_proj` and `out_proj` are shared; the two outputs are averaged.
      * `"none"`: the forward direction only.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        state_size: int = 16,
        conv_kernel: int = 4,
        time_step_rank: int | None = None,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        bimamba_type: str = "fo-bi",
    ):
        super().__init__()
        if bimamba_type not in BIMAMBA_TYPES:
            raise ValueError(f"`bimamba_type` must be one of {BIMAMBA_TYPES}, got {bimamba_type!r}.")
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.state_size = state_size
        self.time_step_rank = time_step_rank or math.ceil(hidden_size / 16)
        self.bimamba_type = bimamba_type

        self.in_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=use_bias)
        self.conv1d, self.x_proj, self.dt_proj = self._branch(conv_kernel, use_conv_bias)
        self.A_log = nn.Parameter(torch.empty(intermediate_size, state_size))
        self.D = nn.Parameter(torch.empty(intermediate_size))
        if bimamba_type in ("fo-bi", "bi-bi"):
            self.A_b_log = nn.Parameter(torch.empty(intermediate_size, state_size))
        if bimamba_type == "bi-bi":
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._branch(conv_kernel, use_conv_bias)
            self.D_b = nn.Parameter(torch.empty(intermediate_size))
        self.out_proj = nn.Linear(intermediate_size, hidden_size, bias=use_bias)

    def _branch(self, conv_kernel: int, use_conv_bias: bool) -> tuple[nn.Conv1d, nn.Linear, nn.Linear]:
        conv1d = nn.Conv1d(
            self.intermediate_size,
            self.intermediate_size,
            kernel_size=conv_kernel,
            groups=self.intermediate_size,
            padding=conv_kernel - 1,
            bias=use_conv_bias,
        )
        x_proj = nn.Linear(self.intermediate_size, self.time_step_rank + 2 * self.state_size, bias=False)
        dt_proj = nn.Linear(self.time_step_rank, self.intermediate_size, bias=True)
        return conv1d, x_proj, dt_proj

    def _ssm_inputs(self, x: torch.Tensor, x_proj: nn.Linear, dt_proj: nn.Linear):
        """`(delta, B, C)` from the convolved input `x` `(batch, d_inner, length)`; `delta` before its bias and
        softplus (the scan applies them), `B`, `C` `(batch, d_state, length)`."""
        time_step, B, C = torch.split(
            x_proj(x.transpose(1, 2)), [self.time_step_rank, self.state_size, self.state_size], dim=-1
        )
        delta = (time_step @ dt_proj.weight.t()).transpose(1, 2)
        return delta, B.transpose(1, 2), C.transpose(1, 2)

    def _scan(self, x, delta, B, C, z, A_log, D, dt_proj, reverse=False):
        return selective_scan(
            x,
            delta,
            -torch.exp(A_log.float()),
            B,
            C,
            D.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            reverse=reverse,
        )

    def _direction(self, x, z, conv1d, x_proj, dt_proj, A_log, D):
        """One full direction on `(x, z)` `(batch, d_inner, length)`: convolution, projections and scan."""
        x = causal_conv1d(x, conv1d.weight[:, 0], conv1d.bias, activation="silu")
        delta, B, C = self._ssm_inputs(x, x_proj, dt_proj)
        return self._scan(x, delta, B, C, z, A_log, D, dt_proj)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states` `(batch, length, hidden_size)` -> `(batch, length, hidden_size)`."""
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x, z = x.transpose(1, 2), z.transpose(1, 2)  # (batch, d_inner, length)
        if self.bimamba_type == "bi-bi":
            forward = self._direction(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
            backward = self._direction(
                x.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
            )
            y = (forward + backward.flip(-1)) / 2
        else:
            x = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
            delta, B, C = self._ssm_inputs(x, self.x_proj, self.dt_proj)
            y = self._scan(x, delta, B, C, z, self.A_log, self.D, self.dt_proj)
            if self.bimamba_type == "fo-bi":  # the same inputs scanned backwards in time (no flipped copies)
                y = y + self._scan(x, delta, B, C, z, self.A_b_log, self.D, self.dt_proj, reverse=True)
        return self.out_proj(y.transpose(1, 2).to(self.out_proj.weight.dtype))


class FFTPAuMEmbeddings(nn.Module):
    """Patch tokens plus learned position embeddings, with one class token inserted at `config.cls_position`.

    As in AuM, the class token's position embedding is stored first in `position_embeddings` (a prefix, whatever
    the token's place in the sequence), followed by the patch grid's. Inputs of another length than `max_length`
    get time-truncated (shorter) or time-interpolated (longer) patch position embeddings, like FFTP-AST.
    """

    def __init__(self, config: FFTPAuMConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = SpectrogramPatchEmbeddings(
            config.num_mel_bins, config.patch_size, config.frequency_stride, config.time_stride, config.hidden_size
        )
        self.grid_size = config.patch_grid
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Returns the embeddings `(batch, patches + 1, hidden_size)` and the class token's index."""
        patch_tokens, grid = self.patch_embeddings(input_values)
        batch_size, num_patches, _ = patch_tokens.shape
        patch_positions = resize_patch_position_embeddings(
            self.position_embeddings[:, 1:], self.grid_size, grid, truncate_time=True
        )
        patch_tokens = patch_tokens + patch_positions
        cls_token = (self.cls_token + self.position_embeddings[:, :1]).expand(batch_size, -1, -1)
        index = self.config.cls_token_index(num_patches)
        embeddings = torch.cat([patch_tokens[:, :index], cls_token, patch_tokens[:, index:]], dim=1)
        return self.dropout(embeddings), index


class FFTPAuMLayer(GradientCheckpointingLayer):
    """Vim residual block: `residual = residual + hidden_states`, then `hidden_states = Mixer(RMSNorm(residual))`.

    The previous block's mixer output arrives un-added (the add is fused with the norm, as in Vim); this block's
    mixer output leaves through stochastic depth. With `residual_in_fp32` the residual stream stays float32.
    """

    def __init__(self, config: FFTPAuMConfig, drop_path: float = 0.0):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = FFTPAuMRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = FFTPAuMMixer(
            config.hidden_size,
            config.intermediate_size,
            config.state_size,
            config.conv_kernel,
            config.time_step_rank,
            config.use_bias,
            config.use_conv_bias,
            config.bimamba_type,
        )
        self.drop_path = DropPath(drop_path)

    def forward(
        self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states if residual is None else residual + hidden_states
        normed = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.drop_path(self.mixer(normed)), residual


class FFTPAuMPreTrainedModel(PreTrainedModel):
    config_class = FFTPAuMConfig
    config: FFTPAuMConfig
    base_model_prefix = "fftp_aum"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["FFTPAuMEmbeddings", "FFTPAuMLayer"]
    # Mamba keeps the state matrix and skip in float32 (regexes on parameter names, for `from_pretrained(dtype=...)`)
    _keep_in_fp32_modules_strict = [r"mixer\.A_log$", r"mixer\.A_b_log$", r"mixer\.D$", r"mixer\.D_b$"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        # Patch stem and classifier: ViT / AST truncated normal (also applied first to the mixers' layers, which
        # the mixer branch below then re-initialises the Mamba way, since children are initialised first).
        init_transformer_weights(module, config.initializer_range, config.initializer_scheme)
        if isinstance(module, FFTPAuMEmbeddings):
            init.trunc_normal_(module.cls_token, std=config.initializer_range)
            init.trunc_normal_(module.position_embeddings, std=config.initializer_range)
        elif isinstance(module, FFTPAuMRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, FFTPAuMMixer):
            self._init_mixer(module)

    def _init_mixer(self, mixer: FFTPAuMMixer) -> None:
        """Mamba's initialisation (mamba_ssm's `Mamba.__init__` and `_init_weights`, as in Vim / AuM): PyTorch's
        default uniform for the projections and convolution, output projections divided by `sqrt(num_layers)`,
        `dt_proj` weights uniform in `+- rank^-0.5 * scale` and biases the inverse softplus of time steps drawn
        log-uniformly in `[time_step_min, time_step_max]` (floored), S4D-real `A_log = log(1..N)`, `D = 1`."""
        config = self.config
        init.kaiming_uniform_(mixer.in_proj.weight, a=math.sqrt(5))
        out_bound = 1 / math.sqrt(mixer.intermediate_size)  # = kaiming_uniform_(a=sqrt(5)) bound
        if config.rescale_prenorm_residual:
            out_bound /= math.sqrt(config.num_hidden_layers)
        init.uniform_(mixer.out_proj.weight, -out_bound, out_bound)
        for linear in (mixer.in_proj, mixer.out_proj):
            if linear.bias is not None:
                init.zeros_(linear.bias)

        state_range = torch.arange(1, mixer.state_size + 1, dtype=torch.float32, device=mixer.A_log.device)
        A_log = torch.log(state_range).expand(mixer.intermediate_size, -1)
        branches = [(mixer.conv1d, mixer.x_proj, mixer.dt_proj)]
        if mixer.bimamba_type == "bi-bi":
            branches.append((mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b))
        for conv1d, x_proj, dt_proj in branches:
            init.kaiming_uniform_(conv1d.weight, a=math.sqrt(5))
            if conv1d.bias is not None:
                conv_bound = 1 / math.sqrt(conv1d.weight.shape[1] * conv1d.weight.shape[2])
                init.uniform_(conv1d.bias, -conv_bound, conv_bound)
            init.kaiming_uniform_(x_proj.weight, a=math.sqrt(5))
            dt_init_std = mixer.time_step_rank**-0.5 * config.time_step_scale
            if config.time_step_init_scheme == "constant":
                init.constant_(dt_proj.weight, dt_init_std)
            else:
                init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
            log_min, log_max = math.log(config.time_step_min), math.log(config.time_step_max)
            dt = torch.exp(
                torch.rand(mixer.intermediate_size, device=dt_proj.bias.device) * (log_max - log_min) + log_min
            ).clamp(min=config.time_step_floor)
            init.copy_(dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        init.copy_(mixer.A_log, A_log)
        init.ones_(mixer.D)
        if hasattr(mixer, "A_b_log"):
            init.copy_(mixer.A_b_log, A_log)
        if hasattr(mixer, "D_b"):
            init.ones_(mixer.D_b)


class FFTPAuMModel(FFTPAuMPreTrainedModel):
    """The bare FFTP-AuM encoder. `pooler_output` is the final-normalised class token; `hidden_states` holds the
    embeddings and the residual stream after every block (`num_hidden_layers + 1` entries)."""

    def __init__(self, config: FFTPAuMConfig):
        super().__init__(config)
        self.embeddings = FFTPAuMEmbeddings(config)
        self.layers = nn.ModuleList(
            FFTPAuMLayer(config, rate) for rate in drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        )
        self.norm_f = FFTPAuMRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> SpectrogramPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        input_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, frames, num_mel_bins)`):
            Normalised log-mel features from [`SpecPatchFeatureExtractor`].
        output_hidden_states (`bool`, *optional*):
            Return the embeddings and the residual stream after every block.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        embeddings, cls_index = self.embeddings(input_values)
        hidden_states, residual = embeddings, None
        all_hidden_states = (embeddings,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
            if output_hidden_states:
                all_hidden_states += ((residual + hidden_states).to(embeddings.dtype),)
        residual = residual + hidden_states  # the last block's output joins the stream before the final norm
        sequence_output = self.norm_f(residual.to(self.norm_f.weight.dtype))
        pooled_output = sequence_output[:, cls_index]
        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=all_hidden_states
        )


class FFTPAuMForAudioClassification(FFTPAuMPreTrainedModel):
    """FFTP-AuM with AuM's linear head on the (final-normalised) class token.

    The loss follows `config.problem_type`: cross-entropy for single-label data (Speech Commands), binary
    cross-entropy for multi-hot labels (AudioSet), MSE for regression.
    """

    def __init__(self, config: FFTPAuMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.fftp_aum = FFTPAuMModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
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
        outputs = self.fftp_aum(input_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        if not return_dict:
            output = tuple(v for v in (logits, outputs.hidden_states) if v is not None)
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["FFTPAuMModel", "FFTPAuMForAudioClassification", "FFTPAuMPreTrainedModel"]
