# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""AaPE-ViT configuration (aape.txt: Aliasing-aware Patch Embedding for self-supervised audio representations)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_patching import patch_pair

PATCH_EMBEDDING_TYPES = ("standard", "aape_nonadaptive", "aape")
POSITION_EMBEDDING_TYPES = ("sincos", "learned")
TEACHER_INSTANCE_NORM_AXES = ("channels", "tokens")
TEACHER_TARGET_LAYER_OUTPUTS = ("ffn", "block")
MASK_BLOCK_PLACEMENTS = ("eat", "inside")
MASKED_SBLU_INPUTS = ("visible", "full")
UTTERANCE_LOSS_REDUCTIONS = ("mean", "sum")
CONTRASTIVE_NEGATIVES = ("global", "local")


@strict
class AaPEViTConfig(PreTrainedConfig):
    r"""
    Configuration of AaPE-ViT: a ViT-B audio encoder whose patch embedding adds the aliasing-aware features of the
    Structured Bilateral Laplace Unit (SBLU) to the standard patch tokens (aape.txt Sec. III), and of its
    EAT-style teacher-student pre-training (Sec. III-D, IV-B).

    The paper lost most of its inline math and several values in extraction; `../shared/papers/NOTES.md` reconstructs
    them. Every value that had to be *inferred* is a field below and says "inferred" in its description.

    Encoder (ViT-B, Sec. IV-B):

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width `D` of the patch tokens and the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of Transformer encoder layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per encoder layer.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the feed-forward layer of each block.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the feed-forward layers.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the embeddings and on each residual branch.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth rate of the last encoder layer (linear from 0). Table I: 0.0 for pre-training, 0.1 for
            fine-tuning.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of weights.
        initializer_scheme (`str`, *optional*, defaults to `"pytorch"`):
            How linear and convolution layers are initialised when a model is built from a configuration (loading
            weights is unaffected). `"pytorch"`: PyTorch's own defaults (`nn.Linear`: uniform in
            `+-1/sqrt(fan_in)`; attention as `nn.MultiheadAttention`: Xavier-uniform qkv, zero biases), whose
            scale follows each layer's width: at ViT-B width it matches `"vit"`, and narrow models train from scratch
            as fast as a plain PyTorch ViT (benchmarks/bench_from_scratch.py). `"vit"`: truncated normal with
            `initializer_range` everywhere (ViT / DeiT / EAT's ViT-B). Inferred: the paper does not say.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the layer normalisations (ViT / AudioMAE / EAT value).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query / key / value projections have a bias.
        patch_size (`int` or `(int, int)`, *optional*, defaults to 16):
            Patch size `(p_f, p_t)` (frequency, time) of the non-overlapping `Conv2d` patch stem (stride = patch).
        max_length (`int`, *optional*, defaults to 608):
            Number of input frames the position embeddings are made for (6 s crops, Sec. IV-B: 8 x 38 = 304 tokens).
            Longer inputs get position embeddings interpolated along time, shorter ones truncated.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Mel bins of the input log-mel spectrogram.
        position_embedding_type (`str`, *optional*, defaults to `"sincos"`):
            `"sincos"`: fixed 2-D sine-cosine position embeddings "as in AudioMAE" (Sec. IV-B), stored as a
            non-trainable parameter like AudioMAE / MAE do (so they count in the 0.43M of the standard patch
            embedding, see `AaPEViTEmbeddings`); `"learned"`: trainable ones. Inferred.

    Patch embedding (Sec. III-C):

        patch_embedding_type (`str`, *optional*, defaults to `"aape"`):
            `"standard"`: the ViT `Conv2d` patch stem alone; `"aape_nonadaptive"`: standard tokens fused with SBLU
            tokens whose decay / frequency are learned and fixed across time (Table VI ablation); `"aape"`: the
            adaptive AaPE, decay / frequency per patch estimated by the Lambda encoder.
        sblu_hidden_channels (`int`, *optional*, defaults to 16):
            SBLU hidden channels `H` per frequency patch (inferred: the 16 decay / frequency pairs per patch of
            Fig. 4).
        sblu_kernel_size (`int`, *optional*, defaults to 63):
            Odd SBLU kernel size `K` (inferred from the Table VII FLOPs; 31 and 127 in the ablation).
        sblu_stride (`int`, *optional*, defaults to 4):
            SBLU convolution stride `s`; must divide the time patch size (inferred from the Table VII FLOPs).
        sblu_output_dim (`int`, *optional*, defaults to 144):
            SBLU token width `D_o` of every frequency patch (value lost; inferred from the parameter counts). With
            the standard stem at 0.43M (conv + position embeddings) and the fusion `Linear(D + D_o -> D)`, the
            non-adaptive and adaptive patch embeddings have 1,162,656 and 1,860,032 parameters at `D_o = 144`, the
            paper's 1.16M and 1.86M (Tables V-VI); only `D_o` in [140, 146] rounds to both. NOTES.md's "about 192"
            gives 1.21M and 1.91M.
        sblu_attenuation_eps (`float`, *optional*, defaults to 0.01):
            Window edge attenuation threshold `eps` of the stability bound `alpha >= -ln(eps) / c` (value lost;
            inferred, the SBLU module's default, see `specpatch.sblu.SBLU`).
        sblu_highpass_taps (`int`, *optional*, defaults to 63):
            Taps of the zero-phase Hamming FIR high-pass before the SBLU (Sec. III-C); `None` disables it (ablation).
        lambda_hidden_size (`int`, *optional*, defaults to 128):
            Width `D'` of the Lambda encoder (NOTES.md "about 128"; inferred).
        lambda_num_layers (`int`, *optional*, defaults to 3):
            Transformer blocks `L` of the Lambda encoder. Inferred from the parameter counts: adaptive minus
            non-adaptive AaPE is 1.86M - 1.16M = 0.70M, and the Lambda encoder has 0.10M in its two linear maps plus
            0.198M per ViT block of width 128, which gives 0.70M for L = 3 (0.50M for L = 2).
        lambda_num_attention_heads (`int`, *optional*, defaults to 2):
            Attention heads of the Lambda encoder blocks (inferred: ViT's head width of 64).
        lambda_intermediate_size (`int`, *optional*, defaults to 512):
            Feed-forward width of the Lambda encoder blocks (ViT's MLP ratio 4, Sec. III-C).

    Pre-training (Sec. III-D, IV-B, Table I):

        mask_ratio (`float`, *optional*, defaults to 0.8):
            Share of masked patch tokens per view (exact: `round(mask_ratio * tokens)`).
        num_views (`int`, *optional*, defaults to 16):
            Masks (views) per clip `M`, all in one batch (value lost; inferred from EAT's 16 clones).
        mask_block_size_range (`(int, int)`, *optional*, defaults to `(3, 5)`):
            Smallest and largest side, in patches, of the square visible blocks of inverse block masking; each view
            draws its side uniformly (range lost; inferred around EAT's fixed 5 x 5, `mask_length: 5` in EAT's
            `config/pretraining_AS2M.yaml`).
        mask_block_placement (`str`, *optional*, defaults to `"eat"`):
            How the visible blocks are placed (`specpatch.masking.inverse_block_mask`). `"eat"`: EAT's
            `compute_block_mask_2d(inverse_mask=True)`, block centres drawn uniformly over the grid, blocks clamped to
            it, over-placed by `mask_prob_adjust`, then random block cells masked down to the visible budget (few
            isolated visible tokens: about 6 % on 8 x 38 with 5 x 5 blocks). `"inside"`: the earlier rule, whole blocks
            inside the grid under-placed and topped up with isolated random tokens (about 16 %).
        mask_prob_adjust (`float`, *optional*, defaults to 0.07):
            EAT's `mask_prob_adjust` (`config/pretraining_AS2M.yaml`): extra share of the grid covered by visible
            block centres before the union is cut down to the budget (`"eat"` placement only).
        predictor_hidden_size (`int`, *optional*, defaults to 512):
            Width of the cross-attention predictor.
        predictor_num_layers (`int`, *optional*, defaults to 3):
            Cross-attention blocks of the predictor.
        predictor_num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads of the predictor.
        predictor_intermediate_size (`int`, *optional*, defaults to 2048):
            Feed-forward width of the predictor blocks (inferred: MLP ratio 4; with keys / values projected from
            the encoder width inside every block, as CrossMAE does, the predictor has 10.64M parameters, Table VIII
            gives 10.63M).
        predictor_query_ratio (`float`, *optional*, defaults to 0.75):
            Share of the masked tokens used as predictor queries (CrossMAE).
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            InfoNCE temperature `tau` (value lost; inferred, a common choice).
        contrastive_weight (`float`, *optional*, defaults to 0.1):
            Weight `lambda` of the contrastive loss (Table V default).
        contrastive_projection_dim (`int`, *optional*, defaults to 128):
            Output width of the contrastive MLP `D -> D/2 -> out` (inferred: SimCLR's 128).
        contrastive_negatives (`str`, *optional*, defaults to `"global"`):
            Where the InfoNCE negatives come from (Eq. 5: "embeddings from other samples in the batch"). `"global"`:
            the embeddings of every process are all-gathered with gradient (`torch.distributed.nn.functional
            .all_gather`), so with data parallelism each anchor sees the whole global batch and the loss equals the
            single-process loss on that batch; `"local"`: only the process's own micro-batch (the earlier behaviour).
            Without an initialised process group both are the same.
        utterance_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the utterance loss (unit in the paper, following EAT).
        utterance_projection (`bool`, *optional*, defaults to `False`):
            Whether the student class token passes through a `Linear(D -> D)` before the utterance loss. Sec. III-D
            and EAT (`cls_loss` with `utterance_level: false`) compare the class token itself with the mean teacher
            target; `True` keeps the earlier extra projection.
        utterance_loss_reduction (`str`, *optional*, defaults to `"mean"`):
            How the per-row utterance errors (one row per clip and view) are reduced. `"mean"`: averaged over the
            rows, like the masked loss is averaged over tokens. `"sum"`: summed over the rows of each process's
            micro-batch, EAT's effective scaling: its fairseq criterion multiplies the class-token loss by the
            `sample_size` (masked tokens) by which the whole loss is later divided, so relative to the masked loss
            the utterance term weighs `rows per process` times more than with `"mean"` (192 in EAT's recipe, 12
            clips x 16 clones per GPU; `models/EAT_pretraining.py`).
        regression_loss_scale (`float`, *optional*):
            The masked and utterance losses are per-token squared errors summed over channels times this scale,
            averaged over tokens; `None` means `1 / sqrt(hidden_size)` (EAT / data2vec 2.0 `d2v_loss`).
        teacher_target_layer_output (`str`, *optional*, defaults to `"ffn"`):
            Which output of each teacher block feeds the targets. `"ffn"`: the feed-forward output *before* the
            residual add (data2vec 2.0 / EAT `ffn_targets`, `end_of_block_targets: false`); `"block"`: the block's
            output, the residual stream (earlier behaviour), which carries the input patch embedding and the
            position embedding that the predictor's queries also carry, so part of each target can be copied.
        teacher_average_top_k_layers (`int`, *optional*):
            Number of final teacher blocks whose outputs are averaged; `None` means all (EAT's
            `average_top_k_layers: 12` for ViT-B).
        teacher_instance_norm_axis (`str`, *optional*, defaults to `"tokens"`):
            Axis of the per-layer instance normalisation of the teacher targets: `"tokens"` normalises each channel
            over the tokens of a clip (what data2vec 2.0 / EAT's code does: `F.instance_norm` on `(batch, channels,
            tokens)`, `instance_norm_target_layer: true`); `"channels"` normalises each token over its channels (the
            paper's wording, Sec. III-D). Either way the layer average is then layer-normalised without affine
            parameters (`layer_norm_targets: true`). Default `"tokens"` (inferred, EAT's code): it removes every
            component that is the same for all tokens of a clip, so a teacher that outputs one vector everywhere
            gives no target; with `"channels"` such a constant survives and small pre-training runs collapse onto
            it (benchmarks/bench_ssl_probe.py: the masked loss fell from 10.4 to 0.17 in 200 steps, against 3.2
            with `"tokens"`).
        utterance_target_instance_norm_axis (`str`, *optional*):
            `None` (EAT, Sec. III-D): the utterance target is the mean of the teacher targets over the tokens. With
            the default `teacher_instance_norm_axis="tokens"` every layer's channels have zero mean over the tokens
            before the final normalisation, so that mean carries little of the clip (0.2 % of the target variance
            in the small benchmark model, against 20 % with `"channels"`). `"channels"` / `"tokens"`: the utterance
            target is the token mean of targets built with this axis instead (same layers), the patch targets stay
            as they are (not in EAT; an ablation knob).
        masked_sblu_input (`str`, *optional*, defaults to `"visible"`):
            What the SBLU of a masked student view sees. Its high-pass (63 taps, forward-backward), its kernel (63
            frames) and its GroupNorm (statistics over all frames of a frequency patch) reach across patch
            boundaries, so on the whole spectrogram the masked content would move the visible tokens. `"visible"`:
            the masked patches of the view are set to 0 (the standardised log-mel's mean) before the high-pass, and
            the GroupNorm statistics are taken over the view's visible frames only, so nothing a view masks can
            influence its visible tokens (the standard `Conv2d` stem and the Lambda encoder, which runs on visible
            tokens only, do not look across patches). `"full"`: the whole spectrogram (earlier behaviour; leaks).
        ema_momentum_start (`float`, *optional*, defaults to 0.994):
            EMA teacher momentum at the first step.
        ema_momentum_end (`float`, *optional*, defaults to 1.0):
            EMA teacher momentum at the last step (cosine schedule, DINOv2).
    """

    model_type = "aape_vit"

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
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    patch_size: int | list[int] | tuple[int, int] = 16
    max_length: int = 608
    num_mel_bins: int = 128
    position_embedding_type: str = "sincos"
    # patch embedding
    patch_embedding_type: str = "aape"
    sblu_hidden_channels: int = 16
    sblu_kernel_size: int = 63
    sblu_stride: int = 4
    sblu_output_dim: int = 144
    sblu_attenuation_eps: float = 0.01
    sblu_highpass_taps: int | None = 63
    lambda_hidden_size: int = 128
    lambda_num_layers: int = 3
    lambda_num_attention_heads: int = 2
    lambda_intermediate_size: int = 512
    # pre-training
    mask_ratio: float = 0.8
    num_views: int = 16
    mask_block_size_range: list[int] | tuple[int, int] = (3, 5)
    mask_block_placement: str = "eat"
    mask_prob_adjust: float | int = 0.07
    predictor_hidden_size: int = 512
    predictor_num_layers: int = 3
    predictor_num_attention_heads: int = 16
    predictor_intermediate_size: int = 2048
    predictor_query_ratio: float = 0.75
    contrastive_temperature: float = 0.1
    contrastive_weight: float | int = 0.1
    contrastive_projection_dim: int = 128
    contrastive_negatives: str = "global"
    utterance_loss_weight: float | int = 1.0
    utterance_projection: bool = False
    utterance_loss_reduction: str = "mean"
    regression_loss_scale: float | None = None
    teacher_target_layer_output: str = "ffn"
    teacher_average_top_k_layers: int | None = None
    teacher_instance_norm_axis: str = "tokens"
    utterance_target_instance_norm_axis: str | None = None
    masked_sblu_input: str = "visible"
    ema_momentum_start: float = 0.994
    ema_momentum_end: float | int = 1.0

    def __post_init__(self, **kwargs):
        # The JSON round trip gives lists: keep one type.
        if isinstance(self.patch_size, tuple):
            self.patch_size = list(self.patch_size)
        if isinstance(self.mask_block_size_range, tuple):
            self.mask_block_size_range = list(self.mask_block_size_range)
        super().__post_init__(**kwargs)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """`(frequency_patches, time_patches)` for a `num_mel_bins x max_length` input (8 x 38 by default)."""
        patch_frequency, patch_time = patch_pair(self.patch_size)
        return self.num_mel_bins // patch_frequency, self.max_length // patch_time

    @property
    def num_patches(self) -> int:
        frequency_patches, time_patches = self.patch_grid
        return frequency_patches * time_patches

    @property
    def uses_sblu(self) -> bool:
        return self.patch_embedding_type != "standard"

    def validate_architecture(self):
        """Part of `@strict` validation: widths, patching, SBLU and pre-training settings must be consistent."""
        super().validate_architecture()
        choices = (
            ("patch_embedding_type", PATCH_EMBEDDING_TYPES),
            ("position_embedding_type", POSITION_EMBEDDING_TYPES),
            ("teacher_instance_norm_axis", TEACHER_INSTANCE_NORM_AXES),
            ("teacher_target_layer_output", TEACHER_TARGET_LAYER_OUTPUTS),
            ("mask_block_placement", MASK_BLOCK_PLACEMENTS),
            ("masked_sblu_input", MASKED_SBLU_INPUTS),
            ("utterance_loss_reduction", UTTERANCE_LOSS_REDUCTIONS),
            ("contrastive_negatives", CONTRASTIVE_NEGATIVES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        for width, heads, what in (
            ("hidden_size", "num_attention_heads", "encoder"),
            ("lambda_hidden_size", "lambda_num_attention_heads", "Lambda encoder"),
            ("predictor_hidden_size", "predictor_num_attention_heads", "predictor"),
        ):
            if getattr(self, width) % getattr(self, heads) != 0:
                raise ValueError(
                    f"The {what} width `{width}` ({getattr(self, width)}) must be divisible by `{heads}` "
                    f"({getattr(self, heads)})."
                )
        if self.position_embedding_type == "sincos" and (self.hidden_size % 4 or self.predictor_hidden_size % 4):
            raise ValueError(
                "Sine-cosine 2-D position embeddings need `hidden_size` and `predictor_hidden_size` divisible by 4."
            )
        patch_frequency, patch_time = patch_pair(self.patch_size)
        if not 0 < patch_frequency <= self.num_mel_bins:
            raise ValueError(
                f"The frequency patch size ({patch_frequency}) must be between 1 and num_mel_bins ({self.num_mel_bins})."
            )
        if not 0 < patch_time <= self.max_length:
            raise ValueError(
                f"The time patch size ({patch_time}) must be between 1 and max_length ({self.max_length})."
            )
        if self.uses_sblu:
            if self.num_mel_bins % patch_frequency:
                raise ValueError(
                    f"AaPE needs `num_mel_bins` ({self.num_mel_bins}) divisible by the frequency patch size "
                    f"({patch_frequency}): the SBLU maps are grouped per frequency patch."
                )
            if self.sblu_stride < 1 or patch_time % self.sblu_stride:
                raise ValueError(f"`sblu_stride` ({self.sblu_stride}) must divide the time patch size ({patch_time}).")
            if self.sblu_kernel_size < 3 or self.sblu_kernel_size % 2 == 0:
                raise ValueError(f"`sblu_kernel_size` must be an odd integer >= 3, got {self.sblu_kernel_size}.")
            if not 0.0 < self.sblu_attenuation_eps < 1.0:
                raise ValueError(f"`sblu_attenuation_eps` must lie in (0, 1), got {self.sblu_attenuation_eps}.")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must lie in [0, 1), got {self.mask_ratio}.")
        if not 0.0 < self.predictor_query_ratio <= 1.0:
            raise ValueError(f"`predictor_query_ratio` must lie in (0, 1], got {self.predictor_query_ratio}.")
        if self.num_views < 1:
            raise ValueError(f"`num_views` must be at least 1, got {self.num_views}.")
        block = self.mask_block_size_range
        if len(block) != 2 or not 1 <= block[0] <= block[1]:
            raise ValueError(f"`mask_block_size_range` must be (min, max) with 1 <= min <= max, got {block}.")
        if self.utterance_target_instance_norm_axis not in (None,) + TEACHER_INSTANCE_NORM_AXES:
            raise ValueError(
                f"`utterance_target_instance_norm_axis` must be None or one of {TEACHER_INSTANCE_NORM_AXES}, got "
                f"{self.utterance_target_instance_norm_axis!r}."
            )
        if not self.mask_prob_adjust >= 0:
            raise ValueError(f"`mask_prob_adjust` must be >= 0, got {self.mask_prob_adjust}.")
        top_k = self.teacher_average_top_k_layers
        if top_k is not None and not 1 <= top_k <= self.num_hidden_layers:
            raise ValueError(
                f"`teacher_average_top_k_layers` must be None or between 1 and num_hidden_layers "
                f"({self.num_hidden_layers}), got {top_k}."
            )
        if self.contrastive_temperature <= 0:
            raise ValueError(f"`contrastive_temperature` must be positive, got {self.contrastive_temperature}.")
        if not 0.0 <= self.ema_momentum_start <= self.ema_momentum_end <= 1.0:
            raise ValueError(
                "EMA momenta must satisfy 0 <= ema_momentum_start <= ema_momentum_end <= 1, got "
                f"{self.ema_momentum_start} and {self.ema_momentum_end}."
            )


__all__ = ["AaPEViTConfig"]
