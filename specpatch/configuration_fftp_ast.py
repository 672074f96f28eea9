# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""FFTP-AST configuration."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_patching import PatchingConfigMixin


@strict
class FFTPASTConfig(PatchingConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an Audio Spectrogram Transformer with Full-Frequency Temporal Patching (FFTP-AST,
    fftp-specmask.txt). Field names follow transformers' `ASTConfig` where they mean the same thing, so an AST
    configuration converts field for field (see `FFTPASTForAudioClassification.from_ast`).

    The defaults are the FFTP paper's best AudioSet configuration (Table III, 991 patches): ViT-B width, 128 x 10
    patches spanning all 128 mel bins with a time stride of 1 on 1000 frames. The other Table II patchings are
    available through `FFTPASTConfig.from_preset(name)` with `name` in `"square-1212"`, `"fftp-96"`, `"fftp-196"`,
    `"fftp-248"`, `"fftp-496"`, `"fftp-991"`.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the token embeddings and of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of Transformer encoder layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads in each layer.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the feed-forward layer of each block.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the feed-forward layer.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings and on each residual branch.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate of the last layer (linearly increasing from 0 over the layers). AST uses none.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of weights.
        initializer_scheme (`str`, *optional*, defaults to `"pytorch"`):
            How linear and convolution layers are initialised when a model is built from a configuration (loading
            weights is unaffected). `"pytorch"`: PyTorch's own defaults (`nn.Linear`: uniform in
            `+-1/sqrt(fan_in)`; attention as `nn.MultiheadAttention`: Xavier-uniform qkv, zero biases), whose
            scale follows each layer's width: at ViT-B width it matches `"vit"`, and narrow models trained from scratch
            train as fast as a plain PyTorch ViT (benchmarks/bench_from_scratch.py). `"vit"`: truncated normal with
            `initializer_range` everywhere, as ViT / DeiT / AST do (the weights AST starts from were trained that
            way); with it a 96-wide model trained from scratch lags far behind. Inferred: the papers do not say.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of the layer normalisations (AST's value).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query / key / value projections have a bias.
        patch_size (`int` or `(int, int)`, *optional*, defaults to `(128, 10)`):
            Patch size `(frequency, time)`; an int gives a square patch. FFTP sets the frequency size to
            `num_mel_bins`.
        frequency_stride (`int`, *optional*, defaults to 128):
            Stride of the patch stem along frequency (`num_mel_bins` for FFTP).
        time_stride (`int`, *optional*, defaults to 1):
            Stride of the patch stem along time; it sets the temporal overlap and the number of patches.
        max_length (`int`, *optional*, defaults to 1000):
            Number of input frames the position embeddings are learned for (AudioSet: 1000 frames for FFTP, 1024 for
            the square baseline). Longer inputs get time-interpolated position embeddings, shorter ones truncated.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of mel bins of the input spectrogram.
        use_distillation_token (`bool`, *optional*, defaults to `True`):
            Whether a second prefix token follows the class token, as in AST (DeiT's distillation token, kept by AST
            from the DeiT weights it starts from); the pooled output is then the mean of the two. AST checkpoints
            need it (`from_ast` sets it). Without it the class token alone is pooled, as in ViT. Inferred: the FFTP
            paper builds on AST and does not discuss the token.
    """

    model_type = "fftp_ast"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
    initializer_scheme: str = "pytorch"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    patch_size: int | list[int] | tuple[int, int] = (128, 10)
    frequency_stride: int = 128
    time_stride: int = 1
    max_length: int = 1000
    num_mel_bins: int = 128
    use_distillation_token: bool = True

    def __post_init__(self, **kwargs):
        if isinstance(self.patch_size, tuple):
            self.patch_size = list(self.patch_size)  # the JSON round trip gives a list: keep one type
        super().__post_init__(**kwargs)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: the class token, and the distillation token where it is used."""
        return 2 if self.use_distillation_token else 1

    def validate_architecture(self):
        """Part of `@strict` validation: the encoder width and the patching must be consistent."""
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        self._validate_patching()


__all__ = ["FFTPASTConfig"]
