#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Figures of the FFTP and AaPE papers for specpatch models, written as PNG files (needs matplotlib: `specpatch[viz]`).

    # Attention rollout over the log-mel of a clip (FFTP Fig. 3), one panel per model (FFTP-AST or AaPE-ViT folders
    # written by `save_pretrained`, e.g. by examples/finetune.py); LABEL=DIR names a panel
    python examples/visualize.py rollout --model square=outputs/ast-square --model FFTP=outputs/ast-fftp \
        --audio clip.wav --output rollout.png

    # SpecMask against SpecAugment on the same spectrogram (FFTP Fig. 2); without --audio a synthetic scene
    python examples/visualize.py masks --audio clip.wav --output masks.png

    # AaPE's estimated SBLU frequency and decay distributions over time (AaPE Fig. 4)
    python examples/visualize.py aape --model outputs/aape --audio clip.wav --output aape.png

    # Patch count vs GMACs and latency, square vs FFTP (FFTP Fig. 4 / Table III): from the benchmarks' JSON ...
    python benchmarks/bench_patching.py --json patching.json && python benchmarks/bench_aum.py --json aum.json
    python examples/visualize.py efficiency --patching-json patching.json --aum-json aum.json --output cost.png
    python examples/visualize.py efficiency --run-all-json /tmp/specpatch_run_all.json --output cost.png
    # ... or measured here (small widths for a quick look)
    python examples/visualize.py efficiency --measure --ast-overrides '{"hidden_size": 192}' --output cost.png

    # Every figure from tiny random models and a synthetic clip (a smoke test of the whole chain)
    python examples/visualize.py demo --output-dir figures/
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import specpatch  # noqa: F401  (registers the models with the Auto classes)
from specpatch.builtin_dataset import synthesize_clip
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.visualization import (
    aape_sblu_parameters,
    attention_rollout_map,
    count_gmacs,
    efficiency_from_benchmarks,
    featurize_audio_file,
    featurize_waveform,
    log_mel_from_features,
    masking_examples,
    measure_patching_efficiency,
    plot_aape_parameters,
    plot_attention_rollout,
    plot_masking_comparison,
    plot_patch_efficiency,
)


def load_checkpoint(path: str, trust_remote_code: bool = False):
    """Model (eval mode) and feature extractor of a `save_pretrained` folder or hub id."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=trust_remote_code).eval()
    extractor = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, extractor


def _label_and_path(spec: str) -> tuple[str, str]:
    if "=" in spec and not os.path.exists(spec):
        label, path = spec.split("=", 1)
        return label, path
    return os.path.basename(os.path.normpath(spec)) or spec, spec


def synthetic_clip(seconds: float = 10.0, seed: int = 0, sampling_rate: int = 16000) -> np.ndarray:
    """A scene of the built-in dataset (noise plus 1-3 sound events) as a stand-in for a real clip."""
    audio, _ = synthesize_clip(np.random.default_rng(seed), sampling_rate=sampling_rate, duration=seconds)
    return audio


def _features(extractor, audio, max_length=None):
    if isinstance(audio, (str, os.PathLike)):
        return featurize_audio_file(extractor, audio, max_length)
    return featurize_waveform(extractor, audio, max_length)


def rollout_figure(model_specs, audio, output, residual_weight=0.5, trust_remote_code=False, whole_clip=False) -> str:
    """Attention rollout of one or more FFTP-AST / AaPE-ViT checkpoints on one clip (path or waveform at 16 kHz).
    The clip is cut or padded to each extractor's `max_length` (what the model sees in the pipeline) unless
    `whole_clip` (longer inputs get time-interpolated position embeddings)."""
    maps, log_mel, valid = {}, None, None
    for spec in model_specs:
        label, path = _label_and_path(spec)
        model, extractor = load_checkpoint(path, trust_remote_code)
        features, frames = _features(extractor, audio, -1 if whole_clip else None)
        relevance = attention_rollout_map(model, features, residual_weight)[0]
        if log_mel is None:
            log_mel, valid = log_mel_from_features(extractor, features)[0], frames
        elif relevance.shape != log_mel.shape:
            raise ValueError(
                f"{label}: its features have {relevance.shape[0]} frames, the first model's {log_mel.shape[0]}; "
                "models drawn together must use the same number of frames (feature extractor max_length)."
            )
        maps[f"{label} ({model.config.model_type}, {relevance.shape[0]} frames)"] = relevance
    return plot_attention_rollout(log_mel, maps, output, valid_frames=valid)


def masks_figure(audio, output, seed=0, extractor=None) -> str:
    """SpecMask vs SpecAugment on the features of one clip (10 s AudioSet-like input by default)."""
    extractor = extractor or SpecPatchFeatureExtractor(max_length=1000)
    features, frames = _features(extractor, audio)
    spectrogram = features[0, :frames]
    examples = masking_examples(spectrogram, seed=seed)
    return plot_masking_comparison(
        spectrogram, examples, output, title=f"SpecMask vs SpecAugment (AudioSet settings scaled to {frames} frames)"
    )


def aape_figure(model_path, audio, output, bins=32, trust_remote_code=False, whole_clip=False) -> str:
    """AaPE's SBLU frequency / decay distributions over time for one clip (cut to the extractor's `max_length`
    unless `whole_clip`)."""
    model, extractor = load_checkpoint(model_path, trust_remote_code)
    features, frames = _features(extractor, audio, -1 if whole_clip else None)
    parameters = aape_sblu_parameters(model, features[:, :frames])
    log_mel = log_mel_from_features(extractor, features)[0, :frames]
    return plot_aape_parameters(parameters, output, log_mel=log_mel, bins=bins)


def efficiency_figure(args) -> str:
    results = {}
    patching, aum = args.patching_json, args.aum_json
    if args.run_all_json:  # the raw results benchmarks/run_all.py saves hold both scripts' JSON
        with open(args.run_all_json) as handle:
            raw = json.load(handle)["raw"]
        patching = patching or (raw.get("patching") or {}).get("data") or None
        aum = aum or (raw.get("aum") or {}).get("data") or None
    if patching or aum:
        for label, rows in efficiency_from_benchmarks(patching, aum).items():
            if label == "FFTP-AST":
                label = "FFTP-AST (ViT-B)"
            elif label == "FFTP-AuM":
                label = f"FFTP-AuM-{args.aum_size}" if args.aum_size != "none" else "FFTP-AuM"
                if args.aum_size != "none" and any(row["gmacs"] is None for row in rows):
                    fill_aum_gmacs(rows, args.aum_size)  # bench_aum times the presets but counts no GMACs
            results[label] = rows
    if args.measure:
        if args.threads:
            torch.set_num_threads(args.threads)
        ast_overrides = json.loads(args.ast_overrides) if args.ast_overrides else {}
        aum_overrides = json.loads(args.aum_overrides) if args.aum_overrides else {}
        results["FFTP-AST " + _size_label(ast_overrides, "ViT-B")] = measure_patching_efficiency(
            "fftp_ast", config_overrides=ast_overrides, repeats=args.repeats, device=args.device
        )
        results["FFTP-AuM " + _size_label(aum_overrides, "base")] = measure_patching_efficiency(
            "fftp_aum", config_overrides=aum_overrides, repeats=args.repeats, device=args.device
        )
    if not results:
        raise SystemExit("efficiency: give --patching-json / --aum-json / --run-all-json, or --measure.")
    if args.save_json:
        with open(args.save_json, "w") as handle:
            json.dump(results, handle, indent=1)
    return plot_patch_efficiency(results, args.output, title=args.title)


def fill_aum_gmacs(rows: list[dict], size: str) -> None:
    """Counts the GMACs of FFTP-AuM-`size` for each row's patching (one forward of a clip, random weights)."""
    for row in rows:
        config = specpatch.FFTPAuMConfig.from_size(size, preset=row["config"], num_labels=527)
        model = specpatch.FFTPAuMForAudioClassification(config).eval()
        row["gmacs"] = count_gmacs(model, torch.randn(1, config.max_length, config.num_mel_bins))


def _size_label(overrides: dict, default: str) -> str:
    if not overrides:
        return f"({default})"
    return "(" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")"


def demo(output_dir: str, seconds: float = 4.0, seed: int = 0) -> list[str]:
    """Every figure from tiny random models and a synthetic clip: checks the whole chain in seconds. Random weights
    make near-uniform attention and parameters, so the maps show the plumbing, not what a trained model learned."""
    from transformers import AutoModelForAudioClassification

    os.makedirs(output_dir, exist_ok=True)
    torch.manual_seed(seed)
    frames = int(seconds * 100)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    checkpoints = {
        "square AST": (
            specpatch.FFTPASTConfig(**tiny, patch_size=16, frequency_stride=10, time_stride=10, max_length=frames),
            "kaldi",
        ),
        "FFTP-AST": (specpatch.FFTPASTConfig(**tiny, time_stride=4, max_length=frames), "kaldi"),
        "AaPE-ViT": (
            specpatch.AaPEViTConfig(
                **tiny,
                max_length=frames,
                sblu_hidden_channels=4,
                sblu_kernel_size=15,
                sblu_output_dim=16,
                lambda_hidden_size=16,
                lambda_num_layers=1,
                lambda_num_attention_heads=2,
                lambda_intermediate_size=32,
            ),
            "logmel",
        ),
    }
    paths = {}
    for name, (config, frontend) in checkpoints.items():
        path = os.path.join(output_dir, "checkpoints", name.replace(" ", "-"))
        AutoModelForAudioClassification.from_config(config).save_pretrained(path)
        SpecPatchFeatureExtractor(max_length=frames, frontend=frontend).save_pretrained(path)
        paths[name] = path
    audio = synthetic_clip(seconds, seed)
    written = [
        rollout_figure(
            [f"{name}={paths[name]}" for name in checkpoints], audio, os.path.join(output_dir, "rollout.png")
        ),
        masks_figure(
            audio,
            os.path.join(output_dir, "masks.png"),
            seed=seed,
            extractor=SpecPatchFeatureExtractor(max_length=frames),
        ),
        aape_figure(paths["AaPE-ViT"], audio, os.path.join(output_dir, "aape_parameters.png")),
    ]
    small = {"hidden_size": 32, "num_hidden_layers": 2}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread start-up and a busy machine would dominate the latency
    results = {
        "FFTP-AST (width 32, 2 layers)": measure_patching_efficiency(
            "fftp_ast", config_overrides={**small, "num_attention_heads": 4, "intermediate_size": 64}, repeats=1
        ),
        "FFTP-AuM (width 32, 2 layers)": measure_patching_efficiency("fftp_aum", config_overrides=small, repeats=1),
    }
    torch.set_num_threads(threads)
    written.append(
        plot_patch_efficiency(results, os.path.join(output_dir, "efficiency.png"), title="tiny models (demo)")
    )
    return written


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("rollout", help="attention rollout over the log-mel (FFTP Fig. 3)")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="FFTP-AST / AaPE-ViT checkpoint folder or hub id, optionally LABEL=PATH; repeat to compare",
    )
    p.add_argument("--audio", required=True, help="audio file (any format audio_utils.load_audio decodes)")
    p.add_argument("--output", default="rollout.png")
    p.add_argument("--residual-weight", type=float, default=0.5, help="identity share mixed into each layer")
    p.add_argument("--whole-clip", action="store_true", help="the whole clip, not the extractor's max_length frames")
    p.add_argument("--trust-remote-code", action="store_true")

    p = commands.add_parser("masks", help="SpecMask vs SpecAugment (FFTP Fig. 2)")
    p.add_argument("--audio", help="audio file (default: a synthetic 10 s scene)")
    p.add_argument("--model", help="use this checkpoint's feature extractor (default: kaldi, 1000 frames)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="masks.png")

    p = commands.add_parser("aape", help="AaPE SBLU frequency / decay distributions (AaPE Fig. 4)")
    p.add_argument("--model", required=True, help="AaPE-ViT checkpoint folder or hub id")
    p.add_argument("--audio", required=True)
    p.add_argument("--bins", type=int, default=32)
    p.add_argument("--output", default="aape_parameters.png")
    p.add_argument("--whole-clip", action="store_true", help="the whole clip, not the extractor's max_length frames")
    p.add_argument("--trust-remote-code", action="store_true")

    p = commands.add_parser("efficiency", help="patch count vs GMACs and latency (FFTP Fig. 4 / Table III)")
    p.add_argument("--patching-json", help="output of benchmarks/bench_patching.py --json")
    p.add_argument("--aum-json", help="output of benchmarks/bench_aum.py --json")
    p.add_argument("--run-all-json", help="raw results of benchmarks/run_all.py (both scripts' JSON)")
    p.add_argument(
        "--aum-size",
        default="tiny",
        choices=["tiny", "small", "base", "none"],
        help="AuM size bench_aum.py timed (its default: tiny), whose GMACs are counted here; none: do not count",
    )
    p.add_argument("--measure", action="store_true", help="measure FFTP-AST and FFTP-AuM here")
    p.add_argument("--ast-overrides", help="FFTP-AST config fields for --measure, e.g. '{\"hidden_size\": 192}'")
    p.add_argument("--aum-overrides", help="FFTP-AuM config fields for --measure, e.g. '{\"hidden_size\": 192}'")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads for --measure (1 is steadiest on a busy machine)")
    p.add_argument("--save-json", help="also write the rows drawn to this JSON file")
    p.add_argument("--title")
    p.add_argument("--output", default="efficiency.png")

    p = commands.add_parser("demo", help="every figure from tiny random models and a synthetic clip")
    p.add_argument("--output-dir", default="figures")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    if args.command == "rollout":
        written = [
            rollout_figure(
                args.model, args.audio, args.output, args.residual_weight, args.trust_remote_code, args.whole_clip
            )
        ]
    elif args.command == "masks":
        audio = args.audio if args.audio else synthetic_clip(10.0, args.seed)
        extractor = load_checkpoint(args.model)[1] if args.model else None
        written = [masks_figure(audio, args.output, args.seed, extractor)]
    elif args.command == "aape":
        written = [
            aape_figure(args.model, args.audio, args.output, args.bins, args.trust_remote_code, args.whole_clip)
        ]
    elif args.command == "efficiency":
        written = [efficiency_figure(args)]
    else:
        written = demo(args.output_dir, args.seconds, args.seed)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
