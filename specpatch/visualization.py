# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Interpretability helpers and figures: attention rollout, mask comparisons, SBLU parameters, efficiency plots.

Computations (need only torch):

* `attention_rollout`, `patch_scores_to_spectrogram`, `attention_rollout_map`: Attention Rollout (Abnar & Zuidema,
  2020) of FFTP-AST / AaPE-ViT mapped back onto the spectrogram cells (FFTP paper, Fig. 3).
* `aape_sblu_parameters`: the bounded decay and frequency the Lambda encoder estimates for every patch (AaPE, Fig. 4).
* `masking_examples`: SpecMask and SpecAugment drawn on the same spectrogram (FFTP paper, Fig. 2).
* `measure_patching_efficiency`, `efficiency_from_benchmarks`: patch count, GMACs and latency of the Table II
  patchings (FFTP paper, Fig. 4 / Table III).
* `featurize_audio_file`, `log_mel_from_features`: a clip's features the way a checkpoint's feature extractor makes
  them, and their log-mel values for display.

Figures (`plot_*`): PNG files written with matplotlib, imported lazily (`pip install specpatch[viz]`). Time axes are in
seconds (10 ms frames), frequency axes in mel bins.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .configuration_patching import TABLE_II_NUM_PATCHES, TABLE_II_PRESETS, patch_pair

FRAME_SHIFT_S = 0.01
"""Frame shift of both front ends (kaldi fbank and AaPE log-mel): 10 ms, 160 samples at 16 kHz."""

# FFTP paper, Table III (AST on AudioSet-18k, one A100, 10 s input): patches -> (GFLOPs as printed, which are
# multiply-accumulates of the linear layers and the patch convolution, see NOTES.md; inference latency in ms).
PAPER_TABLE_III = {
    "square-1212": (103.35, 14.50),
    "fftp-96": (4.15, 0.96),
    "fftp-196": (17.30, 2.18),
    "fftp-248": (21.48, 2.62),
    "fftp-496": (42.79, 5.38),
    "fftp-991": (85.32, 11.62),
}


# ----------------------------------------------------------------------------------------------------------------------
# Attention rollout (FFTP paper, Sec. IV-C, Fig. 3)
# ----------------------------------------------------------------------------------------------------------------------


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


def num_prefix_tokens(config) -> int:
    """Tokens before the patch tokens in a model's attention maps: 2 for FFTP-AST (class and distillation tokens, as
    in AST; 1 without the distillation token), 1 for AaPE-ViT (class token). FFTP-AuM has no attention maps."""
    model_type = getattr(config, "model_type", None)
    if model_type == "fftp_ast":
        return config.num_prefix_tokens
    if model_type == "aape_vit":
        return 1
    raise ValueError(
        f"Attention rollout needs a Transformer with attention maps (model_type 'fftp_ast' or 'aape_vit'), got "
        f"{model_type!r}."
    )


def patch_layout(config) -> tuple[tuple[int, int], tuple[int, int]]:
    """`(patch_size, stride)` of a model's patch stem, each `(frequency, time)`: FFTP-AST / FFTP-AuM take the strides
    from the config, AaPE-ViT patches do not overlap (stride = patch)."""
    patch = patch_pair(config.patch_size)
    if getattr(config, "model_type", None) == "aape_vit":
        return patch, patch
    if not hasattr(config, "frequency_stride"):
        raise ValueError(f"Cannot tell the patch strides of model_type {getattr(config, 'model_type', None)!r}.")
    return patch, (int(config.frequency_stride), int(config.time_stride))


@torch.no_grad()
def attention_rollout_map(
    model: torch.nn.Module, input_values: torch.Tensor, residual_weight: float = 0.5
) -> torch.Tensor:
    """Attention rollout of FFTP-AST or AaPE-ViT spread over the spectrogram cells.

    Runs `model(input_values, output_attentions=True)` (any FFTP-AST / AaPE-ViT model, base or classification,
    loaded with the package or with `trust_remote_code`), rolls the attention out with `attention_rollout` and maps
    every patch's relevance onto the cells it covers with `patch_scores_to_spectrogram`.

    Args:
        model: the model (put it in eval mode first).
        input_values (`torch.Tensor` of shape `(batch, frames, num_mel_bins)`): features from the model's feature
            extractor.
        residual_weight: weight of the identity (residual path) mixed into each layer's attention.

    Returns:
        `(batch, frames, num_mel_bins)` float32 relevance per cell (0 where no patch covers a cell).
    """
    config = model.config
    prefix = num_prefix_tokens(config)
    if input_values.ndim != 3 or input_values.shape[-1] != config.num_mel_bins:
        raise ValueError(
            f"`input_values` must have shape (batch, frames, {config.num_mel_bins}), got {tuple(input_values.shape)}."
        )
    parameter = next(model.parameters())
    outputs = model(input_values.to(parameter.device, parameter.dtype), output_attentions=True, return_dict=True)
    if not outputs.attentions:
        raise ValueError("The model returned no attention maps for `output_attentions=True`.")
    scores = attention_rollout(outputs.attentions, prefix, residual_weight)
    patch, stride = patch_layout(config)
    num_frames = input_values.shape[1]
    grid = (
        (config.num_mel_bins - patch[0]) // stride[0] + 1,
        (num_frames - patch[1]) // stride[1] + 1,
    )
    if scores.shape[-1] != grid[0] * grid[1]:
        raise ValueError(
            f"The model has {scores.shape[-1]} patch tokens, but patches {patch} with strides {stride} on "
            f"{num_frames} frames give a {grid[0]} x {grid[1]} grid."
        )
    return patch_scores_to_spectrogram(scores.cpu(), patch, stride, num_frames, config.num_mel_bins)


# ----------------------------------------------------------------------------------------------------------------------
# Features of a clip
# ----------------------------------------------------------------------------------------------------------------------


def featurize_audio_file(
    extractor, audio_path: str | os.PathLike, max_length: int | None = None
) -> tuple[torch.Tensor, int]:
    """Decodes an audio file (`audio_utils.load_audio`, resampled to the extractor's rate, mono) and computes the
    extractor's features: `(input_values (1, frames, mel), valid_frames)`; frames past `valid_frames` are padding.
    `max_length`: frames to pad / truncate to, the extractor's `max_length` by default, `-1` for the whole clip."""
    from .audio_utils import load_audio

    audio, _ = load_audio(audio_path, sampling_rate=extractor.sampling_rate)
    return featurize_waveform(extractor, audio, max_length)


def featurize_waveform(
    extractor, audio: np.ndarray | torch.Tensor, max_length: int | None = None
) -> tuple[torch.Tensor, int]:
    """Features `(1, frames, mel)` and the number of valid frames of one mono clip at the extractor's rate (see
    `featurize_audio_file` for `max_length`)."""
    waveform = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(1, -1)
    if waveform.shape[-1] < extractor.win_length:
        raise ValueError(
            f"The clip has {waveform.shape[-1]} samples, fewer than one analysis window ({extractor.win_length})."
        )
    features, valid = extractor.extract_features(waveform, max_length=max_length)
    return features, int(valid[0])


def log_mel_from_features(extractor, input_values: torch.Tensor) -> torch.Tensor:
    """Undoes the extractor's normalisation, `x * scale + mean`, to show natural-log mel energies."""
    if not getattr(extractor, "do_normalize", True):
        return input_values
    return input_values * extractor.normalization_scale + extractor.mean


# ----------------------------------------------------------------------------------------------------------------------
# AaPE: decay and frequency estimated by the Lambda encoder (AaPE, Sec. III-C and Fig. 4)
# ----------------------------------------------------------------------------------------------------------------------


def _aape_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The student's `AaPEViTEmbeddings` of any AaPE-ViT model (base, classification, pre-training). Found by
    attribute rather than class, so that models loaded with `trust_remote_code` (other class objects) work too."""
    base = getattr(model, "aape_vit", model)
    embeddings = getattr(base, "embeddings", None)
    if getattr(getattr(model, "config", None), "model_type", None) != "aape_vit" or embeddings is None:
        raise ValueError("`aape_sblu_parameters` needs an AaPE-ViT model (model_type 'aape_vit').")
    return embeddings


@torch.no_grad()
def aape_sblu_parameters(model: torch.nn.Module, input_values: torch.Tensor) -> dict:
    """The SBLU decay `alpha` and frequency `omega` AaPE-ViT uses for every channel and time patch of a clip.

    For the adaptive AaPE (`patch_embedding_type="aape"`) these are the Lambda encoder's estimates after the
    Sec. III-C bounds (`alpha = softplus(a) + alpha_min`, `omega = omega_low + (omega_high - omega_low) sigmoid(b)`),
    read by a forward pre-hook on the SBLU module while the patch embedding runs, so they are exactly what the model
    convolves with. For the non-adaptive ablation they are its learned fixed parameters, repeated over time.

    Args:
        model: an AaPE-ViT model (`AaPEViTModel`, `...ForAudioClassification` or `...ForPreTraining`).
        input_values (`torch.Tensor` of shape `(batch, frames, num_mel_bins)`): features.

    Returns:
        A dict with `decay` and `frequency`, float32 CPU tensors of shape `(batch, N_f, H, N_t)` (frequency patch,
        SBLU channel, time patch), `frequency` in radians per frame; `decay_min`, `frequency_band`
        (`(pi / p_t, pi)`), `patch_time` (frames per time patch) and `grid` (`(N_f, N_t)`).
    """
    embeddings = _aape_embeddings(model)
    sblu = getattr(embeddings, "sblu", None)
    if sblu is None:
        raise ValueError(
            "This AaPE-ViT uses the standard patch embedding (patch_embedding_type='standard'): it has no SBLU."
        )
    if input_values.ndim != 3 or input_values.shape[-1] != sblu.num_mel_bins:
        raise ValueError(
            f"`input_values` must have shape (batch, frames, {sblu.num_mel_bins}), got {tuple(input_values.shape)}."
        )
    batch, num_frames = input_values.shape[:2]
    num_time = sblu.num_time_patches(num_frames)
    if num_time < 1:
        raise ValueError(f"Need at least {sblu.patch_size[1]} frames (one time patch), got {num_frames}.")
    if sblu.adaptive:
        captured = {}

        def capture(module, args, kwargs):
            # `SBLU.forward(input_values, decay, frequency)`: bounded, at time-patch resolution (batch, N_f H, N_t).
            names = ("input_values", "decay", "frequency")
            bound = {**dict(zip(names, args)), **kwargs}
            captured["decay"], captured["frequency"] = bound["decay"], bound["frequency"]

        handle = sblu.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            parameter = next(embeddings.parameters())
            embeddings(input_values.to(parameter.device, parameter.dtype))
        finally:
            handle.remove()
        decay, frequency = captured["decay"], captured["frequency"]
    else:
        decay, frequency = sblu.fixed_parameters()
        decay = decay[None, :, None].expand(batch, -1, num_time)
        frequency = frequency[None, :, None].expand(batch, -1, num_time)

    shape = (batch, sblu.num_frequency_patches, sblu.hidden_channels, num_time)
    return {
        "decay": decay.detach().float().cpu().reshape(shape),
        "frequency": frequency.detach().float().cpu().reshape(shape),
        "decay_min": float(sblu.decay_min),
        "frequency_band": (float(sblu.frequency_low), float(sblu.frequency_high)),
        "patch_time": int(sblu.patch_size[1]),
        "grid": (sblu.num_frequency_patches, num_time),
    }


# ----------------------------------------------------------------------------------------------------------------------
# SpecMask vs SpecAugment (FFTP paper, Fig. 2)
# ----------------------------------------------------------------------------------------------------------------------


def scaled_audioset_masking(num_frames: int, num_mel_bins: int = 128):
    """`(SpecMask, SpecAugment)` with the FFTP paper's AudioSet settings (1000 frames) scaled to the clip's frames, as
    the built-in training recipe scales them: SpecMask budget 20 % of the cells (25,600 of 128 x 1000), masks up to
    `num_mel_bins` mel x `128 / 1000` of the frames; SpecAugment time masks up to `400 / 1000` of the frames,
    frequency masks up to 5 bins."""
    from .augmentation import SpecAugment, SpecMask

    if num_frames < 1 or num_mel_bins < 1:
        raise ValueError(f"Need a non-empty spectrogram, got {num_frames} frames x {num_mel_bins} mel bins.")
    spec_mask = SpecMask(
        budget=round(0.2 * num_frames * num_mel_bins),
        max_height=num_mel_bins,
        max_width=max(1, min(num_frames, round(0.128 * num_frames))),
    )
    spec_augment = SpecAugment(freq_mask_param=min(5, num_mel_bins), time_mask_param=max(1, round(0.4 * num_frames)))
    return spec_mask, spec_augment


def masking_description(module) -> str:
    """A short description of a SpecMask / SpecAugment module's settings, for figure titles."""
    if hasattr(module, "budget"):
        return (
            f"SpecMask (budget {module.budget:,} cells, masks up to {module.max_height} mel x {module.max_width} "
            f"frames, {100 * module.full_frequency_prob:.0f} % full-frequency)"
        )
    if hasattr(module, "time_mask_param"):
        return (
            f"SpecAugment ({module.num_time_masks} time mask(s) up to {module.time_mask_param} frames, "
            f"{module.num_freq_masks} frequency mask(s) up to {module.freq_mask_param} mel bins)"
        )
    raise ValueError(f"Expected a SpecMask or SpecAugment module, got {type(module).__name__}.")


@torch.no_grad()
def masking_examples(
    input_values: torch.Tensor,
    spec_mask=None,
    spec_augment=None,
    seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """SpecMask and SpecAugment applied to the same `(frames, mel)` spectrogram, reproducibly.

    Returns `{description: (masked, mask)}` for SpecMask then SpecAugment (`masking_description` of each module, which
    starts with "SpecMask" / "SpecAugment"), each `(frames, mel)`; `mask` is `True` where a cell was masked.
    Defaults: `scaled_audioset_masking` for the clip's size.
    """
    if input_values.ndim != 2:
        raise ValueError(f"`input_values` must be one (frames, mel) spectrogram, got {tuple(input_values.shape)}.")
    default_mask, default_augment = scaled_audioset_masking(*input_values.shape)
    spec_mask = spec_mask if spec_mask is not None else default_mask
    spec_augment = spec_augment if spec_augment is not None else default_augment
    spectrogram = input_values.float().cpu()
    return {
        masking_description(module): module(
            spectrogram, generator=torch.Generator().manual_seed(seed), return_mask=True
        )
        for module in (spec_mask, spec_augment)
    }


# ----------------------------------------------------------------------------------------------------------------------
# Patch count vs cost (FFTP paper, Fig. 4 / Table III)
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _identity_selective_scans(model: torch.nn.Module):
    """Within the block, every FFTP-AuM mixer's selective scan returns its input unchanged.

    The scan is an elementwise recurrence that the counter does not count, but under `FlopCounterMode` its many small
    ops cost a minute per forward of AuM-tiny; with the stand-in the count is the same (a test checks it) and takes a
    second. Mixers are found by their `_scan` method (FFTP-AuM's), so this does nothing to other models."""
    mixers = [m for m in model.modules() if callable(getattr(m, "_scan", None)) and hasattr(m, "bimamba_type")]
    for mixer in mixers:
        mixer._scan = lambda x, *args, **kwargs: x
    try:
        yield
    finally:
        for mixer in mixers:
            del mixer._scan


def count_gmacs(model: torch.nn.Module, input_values: torch.Tensor, skip_selective_scan: bool = True) -> float:
    """Multiply-accumulates (GMACs) per clip of one forward, counted with `torch.utils.flop_counter`, over the linear
    layers and convolutions only: the FFTP paper's Table III convention (attention's two batched products and the
    selective scan's elementwise recurrence are not counted; FFTP-AuM's depthwise causal convolution is computed as
    shifted multiply-adds on CPU and is not counted either, under 1 % of the total).

    `skip_selective_scan` replaces FFTP-AuM's scans by the identity while counting, which gives the same count 50x
    faster."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    stand_in = _identity_selective_scans(model) if skip_selective_scan else contextlib.nullcontext()
    with torch.no_grad(), stand_in, counter:
        model(input_values)
    counts = counter.get_flop_counts()["Global"]
    kept = sum(flops for op, flops in counts.items() if "bmm" not in str(op) and "scaled_dot" not in str(op))
    return kept / 2e9 / input_values.shape[0]


def _model_classes(model_type: str):
    from .configuration_fftp_ast import FFTPASTConfig
    from .configuration_fftp_aum import FFTPAuMConfig
    from .modeling_fftp_ast import FFTPASTForAudioClassification
    from .modeling_fftp_aum import FFTPAuMForAudioClassification

    classes = {
        "fftp_ast": (FFTPASTConfig, FFTPASTForAudioClassification),
        "fftp_aum": (FFTPAuMConfig, FFTPAuMForAudioClassification),
    }
    if model_type not in classes:
        raise ValueError(f"`model_type` must be 'fftp_ast' or 'fftp_aum', got {model_type!r}.")
    return classes[model_type]


def measure_patching_efficiency(
    model_type: str = "fftp_ast",
    presets: Sequence[str] | None = None,
    config_overrides: Mapping | None = None,
    batch_size: int = 1,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    num_labels: int = 527,
) -> list[dict]:
    """Patch count, GMACs and forward latency of FFTP-AST or FFTP-AuM for Table II patchings, measured here.

    Models get random weights and the config class's default size unless `config_overrides` says otherwise (e.g.
    `{"hidden_size": 192, "num_hidden_layers": 4}` for a quick run). Latency is the fastest of `repeats` forward
    passes, the configurations interleaved so that machine load affects all alike (as in `benchmarks/`).

    Returns:
        One dict per preset (default: all of Table II): `config`, `patches`, `gmacs` (linear layers + convolutions,
        per clip, see `count_gmacs`) and `latency_s` (per batch of `batch_size`).
    """
    config_class, model_class = _model_classes(model_type)
    presets = list(presets) if presets is not None else list(TABLE_II_PRESETS)
    unknown = [name for name in presets if name not in TABLE_II_PRESETS]
    if unknown or not presets:
        raise ValueError(f"`presets` must be names from {sorted(TABLE_II_PRESETS)}, got {presets}.")
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"`batch_size` and `repeats` must be positive, got {batch_size} and {repeats}.")
    device = torch.device(device)
    torch.manual_seed(0)
    models, inputs, rows = {}, {}, []
    for name in presets:
        config = config_class.from_preset(name, num_labels=num_labels, **dict(config_overrides or {}))
        models[name] = model_class(config).eval().to(device)
        inputs[name] = torch.randn(batch_size, config.max_length, config.num_mel_bins, device=device)
        gmacs = count_gmacs(models[name], inputs[name][:1])
        rows.append({"config": name, "patches": config.num_patches, "gmacs": gmacs})

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {name: [] for name in presets}
    with torch.inference_mode():
        for name in presets:  # warm-up
            models[name](inputs[name])
        for _ in range(repeats):
            for name in presets:
                synchronize()
                start = time.perf_counter()
                models[name](inputs[name])
                synchronize()
                times[name].append(time.perf_counter() - start)
    for row in rows:
        row["latency_s"] = min(times[row["config"]])
    return rows


def efficiency_from_benchmarks(
    patching_json: str | os.PathLike | Mapping | None = None, aum_json: str | os.PathLike | Mapping | None = None
) -> dict[str, list[dict]]:
    """Rows for `plot_patch_efficiency` from the JSON files the benchmarks write.

    Args:
        patching_json: output of `benchmarks/bench_patching.py --json` (FFTP-AST at ViT-B width: patches, GMACs in
            the paper's convention, latency), as a path or an already loaded dict.
        aum_json: output of `benchmarks/bench_aum.py --json` (FFTP-AuM latency per patching; it counts no GMACs, so
            those rows have `gmacs=None` unless filled in, e.g. from `measure_patching_efficiency`).

    Returns:
        `{"FFTP-AST": rows, "FFTP-AuM": rows}` (only the models given), rows as in `measure_patching_efficiency`.
    """
    import json

    def load(source):
        if isinstance(source, Mapping):
            return source
        with open(source) as handle:
            return json.load(handle)

    results = {}
    if patching_json is not None:
        data = load(patching_json)
        if "rows" not in data:
            raise ValueError("The patching JSON has no 'rows': expected the output of bench_patching.py --json.")
        results["FFTP-AST"] = [
            {
                "config": row["config"],
                "patches": row["patches"],
                "gmacs": row.get("gmacs_paper"),
                "latency_s": row.get("latency_s"),
            }
            for row in data["rows"]
        ]
    if aum_json is not None:
        data = load(aum_json)
        if "model" not in data:
            raise ValueError("The AuM JSON has no 'model' section: run bench_aum.py --json without --skip-model.")
        results["FFTP-AuM"] = [
            {"config": name, "patches": row["patches"], "gmacs": row.get("gmacs"), "latency_s": row.get("latency_s")}
            for name, row in data["model"].items()
        ]
    if not results:
        raise ValueError("Give at least one of `patching_json` and `aum_json`.")
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Figures (matplotlib, imported lazily)
# ----------------------------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    """A matplotlib `Figure` not attached to pyplot (no global state, no GUI backend needed)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The figures need matplotlib: `pip install specpatch[viz]`.") from err
    return Figure(figsize=(width, height), layout="constrained")


def _save(figure, path: str | os.PathLike, dpi: int = 120) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    return path


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _check_spectrogram(spectrogram, name: str = "spectrogram") -> np.ndarray:
    spectrogram = _as_numpy(spectrogram)
    if spectrogram.ndim == 3 and spectrogram.shape[0] == 1:
        spectrogram = spectrogram[0]
    if spectrogram.ndim != 2 or min(spectrogram.shape) < 1:
        raise ValueError(f"`{name}` must be one (frames, mel) spectrogram, got shape {spectrogram.shape}.")
    return spectrogram


def _show_spectrogram(axis, spectrogram: np.ndarray, frame_shift_s: float, **kwargs):
    """`(frames, mel)` drawn with time (s) on x and mel bins on y, low frequencies at the bottom."""
    frames, mel = spectrogram.shape
    image = axis.imshow(
        spectrogram.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        extent=(0.0, frames * frame_shift_s, 0.0, mel),
        **kwargs,
    )
    axis.set_xlabel(f"time (s; {1e3 * frame_shift_s:g} ms frames)")
    axis.set_ylabel("mel bin")
    return image


def plot_attention_rollout(
    log_mel,
    rollouts: Mapping[str, torch.Tensor | np.ndarray],
    path: str | os.PathLike,
    valid_frames: int | None = None,
    frame_shift_s: float = FRAME_SHIFT_S,
    title: str | None = None,
    overlay_alpha: float = 0.6,
) -> str:
    """Attention rollout over the log-mel of a clip (FFTP paper, Fig. 3): the clip's log-mel on top, then one panel per
    model with its rollout over the log-mel in grey, min-max scaled per model (the title gives the max / min ratio).

    Args:
        log_mel: `(frames, mel)` spectrogram to show (e.g. `log_mel_from_features(extractor, input_values)[0]`).
        rollouts: `{label: (frames, mel) relevance}` from `attention_rollout_map`, same frames as `log_mel`.
        path: PNG file to write.
        valid_frames: frames of real audio; padding after them is cut off the figure.

    Returns:
        The path written.
    """
    log_mel = _check_spectrogram(log_mel, "log_mel")
    if not rollouts:
        raise ValueError("`rollouts` is empty: give at least one {label: relevance map}.")
    maps = {label: _check_spectrogram(relevance, f"rollouts[{label!r}]") for label, relevance in rollouts.items()}
    for label, relevance in maps.items():
        if relevance.shape != log_mel.shape:
            raise ValueError(f"Rollout {label!r} has shape {relevance.shape}, the log-mel {log_mel.shape}.")
    frames = log_mel.shape[0] if valid_frames is None else max(1, min(int(valid_frames), log_mel.shape[0]))
    log_mel = log_mel[:frames]

    figure = _new_figure(11, 2.7 * (1 + len(maps)))
    axes = figure.subplots(1 + len(maps), 1, sharex=True)
    image = _show_spectrogram(axes[0], log_mel, frame_shift_s, cmap="magma")
    axes[0].set_title("log-mel spectrogram")
    figure.colorbar(image, ax=axes[0], label="log mel energy", pad=0.01)
    for axis, (label, relevance) in zip(axes[1:], maps.items()):
        relevance = relevance[:frames]
        covered = relevance > 0  # cells no patch covers (e.g. the top mel bins of 16 x 16 / 10 patches) stay clear
        low = float(relevance[covered].min()) if covered.any() else 0.0
        high = float(relevance.max())
        # Min-max scaling: rollouts are often nearly flat (every token keeps its residual share), so the contrast is
        # stretched; the title gives the real max / min ratio.
        scaled = np.ma.masked_where(~covered, (relevance - low) / (high - low) if high > low else relevance * 0)
        _show_spectrogram(axis, log_mel, frame_shift_s, cmap="gray")
        overlay = _show_spectrogram(axis, scaled, frame_shift_s, cmap="jet", alpha=overlay_alpha, vmin=0.0, vmax=1.0)
        ratio = f"{high / low:.3g}" if low > 0 else "inf"
        axis.set_title(f"{label}: attention rollout (max / min relevance {ratio})")
        figure.colorbar(overlay, ax=axis, label="relevance (min 0, max 1)", pad=0.01)
    for axis in axes[:-1]:
        axis.set_xlabel("")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_masking_comparison(
    spectrogram,
    examples: Mapping[str, tuple],
    path: str | os.PathLike,
    frame_shift_s: float = FRAME_SHIFT_S,
    title: str | None = None,
) -> str:
    """SpecMask against SpecAugment on the same spectrogram (FFTP paper, Fig. 2): the original, then each masked
    version with the masked area outlined and its share of the cells in the title.

    Args:
        spectrogram: the `(frames, mel)` input (normalised features).
        examples: `{name: (masked, mask)}` from `masking_examples`.
        path: PNG file to write.
    """
    spectrogram = _check_spectrogram(spectrogram)
    if not examples:
        raise ValueError("`examples` is empty: give at least one {name: (masked, mask)} pair.")
    figure = _new_figure(11, 2.7 * (1 + len(examples)))
    axes = figure.subplots(1 + len(examples), 1, sharex=True)
    limits = {"vmin": float(np.percentile(spectrogram, 1)), "vmax": float(np.percentile(spectrogram, 99.5))}
    image = _show_spectrogram(axes[0], spectrogram, frame_shift_s, cmap="magma", **limits)
    axes[0].set_title("input (normalised log-mel)")
    frames, mel = spectrogram.shape
    for axis, (name, (masked, mask)) in zip(axes[1:], examples.items()):
        masked, mask = _check_spectrogram(masked, f"{name} output"), _check_spectrogram(mask, f"{name} mask") > 0.5
        if masked.shape != spectrogram.shape or mask.shape != spectrogram.shape:
            raise ValueError(f"{name}: masked output and mask must have the input's shape {spectrogram.shape}.")
        _show_spectrogram(axis, masked, frame_shift_s, cmap="magma", **limits)
        if mask.any() and not mask.all():
            # Outline the masked regions: the fill (the mean) alone is hard to tell from quiet cells.
            times = (np.arange(frames) + 0.5) * frame_shift_s
            bins = np.arange(mel) + 0.5
            axis.contour(times, bins, mask.T.astype(float), levels=[0.5], colors="cyan", linewidths=1.0)
        axis.set_title(f"{100 * mask.mean():.1f} % of the cells masked (outlined): {name}", fontsize=10)
    for axis in axes[:-1]:
        axis.set_xlabel("")
    figure.colorbar(image, ax=list(axes), label="normalised log-mel", pad=0.01, shrink=0.6)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _column_histograms(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`values` `(samples, columns)` -> `(bins, columns)` share of each column's samples per bin."""
    counts = np.stack([np.histogram(column, bins=edges)[0] for column in values.T], axis=1)
    return counts / max(values.shape[0], 1)


def plot_aape_parameters(
    parameters: Mapping,
    path: str | os.PathLike,
    log_mel=None,
    clip: int = 0,
    bins: int = 32,
    frame_shift_s: float = FRAME_SHIFT_S,
    title: str | None = None,
) -> str:
    """AaPE's estimated frequency and decay distributions over time for one clip (AaPE, Fig. 4).

    For every time patch, the `N_f x H` frequencies (and decays) the SBLU uses are histogrammed; each column of the
    heat maps is one time patch, its colours the share of the channels per bin; the white line is the median decay.

    Args:
        parameters: the dict from `aape_sblu_parameters`.
        path: PNG file to write.
        log_mel: the clip's `(frames, mel)` log-mel, drawn on top on the same time axis (optional).
        clip: which clip of the batch.
        bins: histogram bins per axis.
    """
    decay = _as_numpy(parameters["decay"])
    frequency = _as_numpy(parameters["frequency"])
    if decay.ndim != 4 or decay.shape != frequency.shape:
        raise ValueError("`parameters` must hold `decay` and `frequency` of shape (batch, N_f, H, N_t).")
    if not 0 <= clip < decay.shape[0]:
        raise ValueError(f"`clip` must index the batch of {decay.shape[0]}, got {clip}.")
    if bins < 2:
        raise ValueError(f"`bins` must be at least 2, got {bins}.")
    patch_time = int(parameters["patch_time"])
    low, high = parameters["frequency_band"]
    decay_min = float(parameters["decay_min"])
    num_time = decay.shape[-1]
    decay = decay[clip].reshape(-1, num_time)
    frequency = frequency[clip].reshape(-1, num_time)
    duration = num_time * patch_time * frame_shift_s
    centres = (np.arange(num_time) + 0.5) * patch_time * frame_shift_s

    rows = 2 + (log_mel is not None)
    figure = _new_figure(11, 2.8 * rows)
    axes = list(figure.subplots(rows, 1, sharex=True))
    if log_mel is not None:
        log_mel = _check_spectrogram(log_mel, "log_mel")[: num_time * patch_time]
        image = _show_spectrogram(axes[0], log_mel, frame_shift_s, cmap="magma")
        axes[0].set_title("input log-mel spectrogram")
        figure.colorbar(image, ax=axes[0], label="log mel energy", pad=0.01)
        axes = axes[1:]

    frequency_edges = np.linspace(low, high, bins + 1)
    share = _column_histograms(frequency, frequency_edges)
    image = axes[0].imshow(
        share,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(0.0, duration, low, high),
    )
    axes[0].set_ylabel("frequency ω (rad / frame)")
    axes[0].set_title(
        f"estimated SBLU frequency per time patch ({frequency.shape[0]} channels each; band π/{patch_time} to π)"
    )
    hertz = 1.0 / (2 * math.pi * frame_shift_s)  # rad / frame -> modulation frequency in Hz
    secondary = axes[0].secondary_yaxis("right", functions=(lambda w: w * hertz, lambda f: f / hertz))
    secondary.set_ylabel("modulation (Hz)")
    figure.colorbar(image, ax=axes[0], label="share of channels", pad=0.08)

    top = max(float(decay.max()), decay_min * 1.05)
    decay_edges = np.linspace(decay_min, top, bins + 1)
    share = _column_histograms(decay, decay_edges)
    image = axes[1].imshow(
        share,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(0.0, duration, decay_min, top),
    )
    axes[1].plot(centres, np.median(decay, axis=0), color="white", linewidth=1.2, label="median")
    axes[1].set_ylabel("decay α (1 / frame)\nlarger: shorter window")
    axes[1].set_title(f"estimated SBLU decay per time patch, white line: median (lower bound α_min = {decay_min:.3f})")
    figure.colorbar(image, ax=axes[1], label="share of channels", pad=0.08)
    axes[1].set_xlabel(f"time (s; {patch_time}-frame time patches)")
    for axis in axes[:-1]:
        axis.set_xlabel("")
    if log_mel is not None:
        figure.axes[0].set_xlabel("")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_patch_efficiency(
    results: Mapping[str, Sequence[Mapping]],
    path: str | os.PathLike,
    paper_reference: bool = True,
    title: str | None = None,
) -> str:
    """Patch count against GMACs and latency, square vs FFTP (FFTP paper, Fig. 4 / Table III).

    Left: GMACs per clip (linear layers + convolutions, the paper's convention), log scale so that models of different
    widths share the axis; right: latency relative to the same model's square-patch (1212) configuration, so that
    measurements from different machines compare. Square-patch configurations are crosses, FFTP ones dots joined by a
    line. With `paper_reference`, Table III of the FFTP paper (AST, A100) is drawn in grey, labelled as the paper's.

    Args:
        results: `{label: rows}` with rows holding `config`, `patches`, `gmacs` (or None) and `latency_s` (or None),
            from `measure_patching_efficiency` or `efficiency_from_benchmarks`.
        path: PNG file to write.
    """
    if not results:
        raise ValueError("`results` is empty: give at least one {label: rows}.")
    from matplotlib.lines import Line2D

    series = {}
    for label, rows in results.items():
        rows = [dict(row) for row in rows]
        for row in rows:
            if "config" not in row or "patches" not in row:
                raise ValueError(f"{label}: every row needs 'config' and 'patches', got {sorted(row)}.")
        series[label] = rows
    if paper_reference:
        series["FFTP paper, Table III (AST, A100)"] = [
            {"config": name, "patches": TABLE_II_NUM_PATCHES[name], "gmacs": gmacs, "latency_s": ms / 1e3}
            for name, (gmacs, ms) in PAPER_TABLE_III.items()
        ]

    figure = _new_figure(12, 5.2)
    gmacs_axis, latency_axis = figure.subplots(1, 2)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    handles = []
    for index, (label, rows) in enumerate(series.items()):
        is_paper = paper_reference and index == len(series) - 1
        colour = "grey" if is_paper else colours[index % len(colours)]
        # The paper's series goes under ours (same square-patch values would hide our markers otherwise).
        style = {"color": colour, "linestyle": "--" if is_paper else "-", "marker": "s" if is_paper else "o"}
        order = 1 if is_paper else 3
        square = next((r for r in rows if r["config"] == "square-1212"), None)
        fftp = sorted((r for r in rows if r["config"] != "square-1212"), key=lambda r: r["patches"])
        for axis, key in ((gmacs_axis, "gmacs"), (latency_axis, "latency_s")):
            scale = 1.0
            if key == "latency_s":
                if square is None or not square.get(key):
                    continue  # latency is drawn relative to the square configuration
                scale = square[key]
            points = [(r["patches"], r[key] / scale) for r in fftp if r.get(key) is not None]
            if points:
                axis.plot(*zip(*points), zorder=order, **style)
            if square is not None and square.get(key) is not None:
                size = 15 if is_paper else 11
                axis.plot(
                    square["patches"],
                    square[key] / scale,
                    marker="X",
                    markersize=size,
                    color=colour,
                    markeredgecolor="white",
                    zorder=order,
                )
        name = label
        if square is not None and square.get("latency_s") and not is_paper:
            milliseconds = 1e3 * square["latency_s"]
            name += f" (square: {milliseconds:.0f} ms)" if milliseconds >= 10 else f" (square: {milliseconds:.3g} ms)"
        handles.append(Line2D([], [], label=name, **style))
    handles.append(
        Line2D(
            [],
            [],
            color="black",
            marker="X",
            markersize=10,
            linestyle="none",
            label="square 16x16 patches, stride 10 (1212)",
        )
    )
    handles.append(Line2D([], [], color="black", marker="o", linestyle="none", label="FFTP 128xT patches"))

    gmacs_axis.set_yscale("log")
    gmacs_axis.set_ylabel("GMACs per clip (linear layers + conv, log scale)")
    gmacs_axis.set_title("compute vs patch count")
    latency_axis.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    latency_axis.set_ylim(bottom=0)
    latency_axis.set_ylabel("latency / square-patch latency")
    latency_axis.set_title("measured latency vs patch count")
    for axis in (gmacs_axis, latency_axis):
        axis.set_xlabel("patches (tokens per clip)")
        axis.set_xlim(0, 1300)
        axis.grid(alpha=0.3, which="both")
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


__all__ = [
    "FRAME_SHIFT_S",
    "PAPER_TABLE_III",
    "aape_sblu_parameters",
    "attention_rollout",
    "attention_rollout_map",
    "count_gmacs",
    "efficiency_from_benchmarks",
    "featurize_audio_file",
    "featurize_waveform",
    "log_mel_from_features",
    "masking_description",
    "masking_examples",
    "measure_patching_efficiency",
    "num_prefix_tokens",
    "patch_layout",
    "patch_scores_to_spectrogram",
    "plot_aape_parameters",
    "plot_attention_rollout",
    "plot_masking_comparison",
    "plot_patch_efficiency",
    "scaled_audioset_masking",
]
