# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""FFTP-AuM configuration."""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_patching import TABLE_II_PRESETS, PatchingConfigMixin

# Audio Mamba sizes (Erol et al., 2024; NOTES.md): all 24 layers deep, Vim-tiny / small / base widths.
AUM_SIZES: dict[str, dict] = {
    "tiny": {"hidden_size": 192, "num_hidden_layers": 24},
    "small": {"hidden_size": 384, "num_hidden_layers": 24},
    "base": {"hidden_size": 768, "num_hidden_layers": 24},
}
BIMAMBA_TYPES = ("fo-bi", "bi-bi", "none")
CLS_POSITIONS = ("middle", "head", "tail")


@strict
class FFTPAuMConfig(PatchingConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an Audio Mamba (AuM, a bidirectional Vision-Mamba-style encoder) with Full-Frequency Temporal
    Patching (FFTP-AuM, fftp-specmask.txt). The patch stem and the patching fields are those of `FFTPASTConfig`;
    the state-space fields follow transformers' `MambaConfig` names where they mean the same thing.

    Defaults: AuM-base (768 wide, 24 layers, Fo-Bi mixer) on the FFTP paper's best patching (128 x 10 patches, time
    stride 1, 1000 frames, 991 patches). `FFTPAuMConfig.from_size("tiny" | "small" | "base", preset=...)` gives the
    AuM sizes, optionally with one of the Table II patchings (`"square-1212"`, `"fftp-96"`, ..., `"fftp-991"`), which
    `FFTPAuMConfig.from_preset(name, **fields)` also gives on their own.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the token embeddings and of the residual stream (192 / 384 / 768 for tiny / small / base).
        num_hidden_layers (`int`, *optional*, defaults to 24):
            Number of Mamba blocks.
        state_size (`int`, *optional*, defaults to 16):
            Size `N` of the state of each channel's selective state-space model (`d_state`).
        conv_kernel (`int`, *optional*, defaults to 4):
            Width of the depthwise causal convolution before the scan (`d_conv`).
        expand (`int`, *optional*, defaults to 2):
            Expansion of the mixer's inner width.
        intermediate_size (`int`, *optional*):
            Inner width of the mixers (`d_inner`); defaults to `expand * hidden_size`.
        time_step_rank (`int` or `"auto"`, *optional*, defaults to `"auto"`):
            Rank of the time-step projection; `"auto"` is `ceil(hidden_size / 16)`.
        time_step_min (`float`, *optional*, defaults to 0.001):
            Lower end of the log-uniform range the initial time steps `softplus(dt_proj.bias)` are drawn from.
        time_step_max (`float`, *optional*, defaults to 0.1):
            Upper end of that range.
        time_step_floor (`float`, *optional*, defaults to 1e-4):
            Minimum initial time step.
        time_step_scale (`float`, *optional*, defaults to 1.0):
            Scale of the `dt_proj` weight initialisation, `time_step_rank ** -0.5 * time_step_scale`.
        time_step_init_scheme (`str`, *optional*, defaults to `"random"`):
            `"random"` (uniform in +- the scale) or `"constant"` initialisation of the `dt_proj` weight.
        use_bias (`bool`, *optional*, defaults to `False`):
            Whether the mixer's input and output projections have a bias.
        use_conv_bias (`bool`, *optional*, defaults to `True`):
            Whether the depthwise convolution has a bias.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation after the convolution and of the gate (Mamba uses SiLU; the only supported value).
        bimamba_type (`str`, *optional*, defaults to `"fo-bi"`):
            Bidirectional mixer variant of AuM. `"fo-bi"`: one convolution and set of projections; the backward scan
            runs on the time-flipped sequence with its own `A_b_log`; both scans' outputs are summed (Vim's "v1",
            AuM's base checkpoints). `"bi-bi"`: the backward branch has its own `conv1d_b`, `x_proj_b`, `dt_proj_b`,
            `A_b_log` and `D_b` (input and output projections shared); the two outputs are averaged (Vim's "v2"
            with `if_devide_out`). `"none"`: forward scan only (a unidirectional ablation).
        layer_norm_epsilon (`float`, *optional*, defaults to 1e-5):
            Epsilon of the RMS normalisations.
        residual_in_fp32 (`bool`, *optional*, defaults to `True`):
            Keep the residual stream in float32 whatever the model's dtype (as Vim / AuM do).
        rescale_prenorm_residual (`bool`, *optional*, defaults to `True`):
            Divide the initial output-projection weights by `sqrt(num_hidden_layers)` (GPT-2 / Mamba scheme).
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate of the last block's mixer output (linearly increasing from 0 over the blocks).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings (AuM's `drop_rate`).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of the patch stem, class token, position
            embeddings and classifier.
        initializer_scheme (`str`, *optional*, defaults to `"pytorch"`):
            How linear and convolution layers are initialised when a model is built from a configuration (loading
            weights is unaffected). `"pytorch"`: PyTorch's own defaults (`nn.Linear`: uniform in
            `+-1/sqrt(fan_in)`; attention as `nn.MultiheadAttention`: Xavier-uniform qkv, zero biases), whose
            scale follows each layer's width: at ViT-B width it matches `"vit"`, and narrow models trained from scratch
            train as fast as a plain PyTorch ViT (benchmarks/bench_from_scratch.py). `"vit"`: truncated normal with
            `initializer_range` everywhere, as ViT / DeiT / AST do (the weights AST starts from were trained that
            way); with it a 96-wide model trained from scratch lags far behind. Inferred: the papers do not say.
        cls_position (`str`, *optional*, defaults to `"middle"`):
            Where the single class token is inserted among the `N` patch tokens: `"middle"` (index `N // 2`, AuM's
            choice, so that both scan directions reach it after half the sequence), `"head"` (0) or `"tail"` (`N`).
        patch_size (`int` or `(int, int)`, *optional*, defaults to `(128, 10)`):
            Patch size `(frequency, time)`; an int gives a square patch.
        frequency_stride (`int`, *optional*, defaults to 128):
            Stride of the patch stem along frequency (`num_mel_bins` for FFTP).
        time_stride (`int`, *optional*, defaults to 1):
            Stride of the patch stem along time.
        max_length (`int`, *optional*, defaults to 1000):
            Number of input frames the position embeddings are learned for; shorter inputs get time-truncated and
            longer ones time-interpolated patch position embeddings.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of mel bins of the input spectrogram.
    """

    model_type = "fftp_aum"

    hidden_size: int = 768
    num_hidden_layers: int = 24
    state_size: int = 16
    conv_kernel: int = 4
    expand: int = 2
    intermediate_size: int | None = None
    time_step_rank: int | str = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_scale: float = 1.0
    time_step_init_scheme: str = "random"
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    bimamba_type: str = "fo-bi"
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    rescale_prenorm_residual: bool = True
    drop_path_rate: float | int = 0.0
    hidden_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    initializer_scheme: str = "pytorch"
    cls_position: str = "middle"
    patch_size: int | list[int] | tuple[int, int] = (128, 10)
    frequency_stride: int = 128
    time_stride: int = 1
    max_length: int = 1000
    num_mel_bins: int = 128

    def __post_init__(self, **kwargs):
        if isinstance(self.patch_size, tuple):
            self.patch_size = list(self.patch_size)  # the JSON round trip gives a list: keep one type
        if self.intermediate_size is None:
            self.intermediate_size = int(self.expand * self.hidden_size)
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: the mixer settings and the patching must be consistent."""
        super().validate_architecture()
        if self.bimamba_type not in BIMAMBA_TYPES:
            raise ValueError(f"`bimamba_type` must be one of {BIMAMBA_TYPES}, got {self.bimamba_type!r}.")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(f"`cls_position` must be one of {CLS_POSITIONS}, got {self.cls_position!r}.")
        if self.hidden_act not in ("silu", "swish"):
            raise ValueError(
                f"Mamba mixers use the SiLU activation; `hidden_act` must be 'silu', got {self.hidden_act!r}."
            )
        if self.time_step_init_scheme not in ("random", "constant"):
            raise ValueError(
                f"`time_step_init_scheme` must be 'random' or 'constant', got {self.time_step_init_scheme!r}."
            )
        if not 0 < self.time_step_min <= self.time_step_max:
            raise ValueError(
                f"Need 0 < time_step_min <= time_step_max, got {self.time_step_min} and {self.time_step_max}."
            )
        for name in ("hidden_size", "num_hidden_layers", "state_size", "conv_kernel", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if not isinstance(self.time_step_rank, int) or self.time_step_rank < 1:
            raise ValueError(f"`time_step_rank` must be a positive integer or 'auto', got {self.time_step_rank!r}.")
        self._validate_patching()

    @classmethod
    def from_size(cls, size: str, preset: str | None = None, **kwargs) -> FFTPAuMConfig:
        """AuM-`size` (`"tiny"` 192, `"small"` 384 or `"base"` 768 wide, 24 layers), optionally on a Table II
        patching `preset`; `kwargs` override any field."""
        if size not in AUM_SIZES:
            raise ValueError(f"Unknown AuM size {size!r}; choose one of {sorted(AUM_SIZES)}.")
        if preset is not None and preset not in TABLE_II_PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(TABLE_II_PRESETS)}.")
        patching = TABLE_II_PRESETS[preset] if preset is not None else {}
        return cls(**{**patching, **AUM_SIZES[size], **kwargs})

    def cls_token_index(self, num_patches: int) -> int:
        """Index of the class token in a sequence of `num_patches` patch tokens plus the class token."""
        return {"middle": num_patches // 2, "head": 0, "tail": num_patches}[self.cls_position]


__all__ = ["FFTPAuMConfig"]
