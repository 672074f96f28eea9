# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Hugging Face hub model cards for FFTP-AST, FFTP-AuM and AaPE-ViT.

`render_model_card` builds a card (YAML metadata header + markdown body) for a model type, optionally filled with a
checkpoint's config, parameter count, training run (the `all_results.json` / `run_args.json` that
`examples/finetune.py` writes next to the model) and the project's efficiency measurements (`benchmarks/RESULTS.md`).
`write_model_card` does this for a `save_pretrained` directory and writes its `README.md`, the file the hub shows.
The generic cards in `model_cards/` are rendered by the same code (`examples/write_model_card.py`).

Results the papers report are always in their own section, labelled as the paper's; numbers this project measured
say where they come from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import torch

from .configuration_aape_vit import AaPEViTConfig
from .configuration_fftp_ast import FFTPASTConfig
from .configuration_fftp_aum import FFTPAuMConfig
from .configuration_patching import patch_pair

FFTP_PAPER = (
    "*Full-Frequency Temporal Patching and Structured Masking for Enhanced Audio Classification* (Makineni et al.)"
)
AAPE_PAPER = "*AaPE: Aliasing-aware Patch Embedding for Self-Supervised Audio Representation Learning*"

CHECKPOINT_PLACEHOLDERS = {
    "fftp_ast": "path/to/fftp-ast",
    "fftp_aum": "path/to/fftp-aum",
    "aape_vit": "path/to/aape-vit",
}
"""The checkpoint string the generic cards' code uses: a `save_pretrained` folder or a hub id goes there."""

CARD_FILES = {"fftp_ast": "fftp-ast.md", "fftp_aum": "fftp-aum.md", "aape_vit": "aape-vit.md"}

_INFO = {
    "fftp_ast": {
        "name": "FFTP-AST",
        "title": "Audio Spectrogram Transformer with Full-Frequency Temporal Patching",
        "tags": ["audio", "audio-classification", "audio-spectrogram-transformer", "fftp", "specmask", "specpatch"],
        "datasets": ["agkphysics/AudioSet", "google/speech_commands"],
        "summary": (
            "FFTP-AST is the Audio Spectrogram Transformer (AST: class and distillation tokens, learned position "
            "embeddings, a ViT encoder) with **Full-Frequency Temporal Patching** (FFTP): every patch spans all mel "
            "bins and a few frames (`Conv2d` kernel `128 x T_p`, frequency stride 128), so the model sees one token "
            "per time step instead of a grid of 16 x 16 squares. On a 10 s clip this gives 96 to 991 patches instead "
            "of AST's 1212, keeps harmonic and formant structure inside a token, and cuts the compute. It is trained "
            "with **SpecMask**, a patch-aligned masking augmentation (Algorithm 1 of the paper): under a fixed budget "
            "of masked cells, 70 % of the masks are full-frequency time bands, the rest local time-frequency boxes."
        ),
        "paper": FFTP_PAPER,
        "benchmarks": ("FFTP-AST", "features", "SpecMask"),
    },
    "fftp_aum": {
        "name": "FFTP-AuM",
        "title": "Audio Mamba with Full-Frequency Temporal Patching",
        "tags": [
            "audio",
            "audio-classification",
            "audio-mamba",
            "mamba",
            "state-space-model",
            "fftp",
            "specmask",
            "specpatch",
        ],
        "datasets": ["agkphysics/AudioSet", "google/speech_commands"],
        "summary": (
            "FFTP-AuM is Audio Mamba (AuM: Vision-Mamba-style blocks with a bidirectional selective state-space "
            "mixer, a class token in the middle of the sequence, RMSNorm, residual stream in float32) with "
            "**Full-Frequency Temporal Patching**: patches spanning all 128 mel bins and a few frames, one token per "
            "time step. The selective scan is a pure-PyTorch chunked parallel scan with a hand-written backward, so "
            "the model trains and runs on any device; the fused `mamba_ssm` CUDA kernels are used when installed. "
            "Like FFTP-AST it is trained with **SpecMask**."
        ),
        "paper": FFTP_PAPER,
        "benchmarks": ("FFTP-AuM", "selective scan", "features", "SpecMask"),
    },
    "aape_vit": {
        "name": "AaPE-ViT",
        "title": "ViT audio encoder with the Aliasing-aware Patch Embedding",
        "tags": [
            "audio",
            "audio-classification",
            "vision-transformer",
            "self-supervised-learning",
            "aape",
            "sblu",
            "specpatch",
        ],
        "datasets": ["agkphysics/AudioSet", "ashraq/esc50", "google/speech_commands"],
        "summary": (
            "AaPE-ViT is a ViT-B audio encoder whose patch embedding adds **aliasing-aware** features to the usual "
            "16 x 16 patch tokens. Patching a log-mel spectrogram with a time stride of 16 frames aliases every "
            "temporal modulation above the post-patching Nyquist frequency; the **Structured Bilateral Laplace Unit "
            "(SBLU)** recovers that band: after a zero-phase high-pass along time, a bank of complex damped "
            "sinusoidal kernels (decay `alpha`, frequency `omega` in `[pi / 16, pi]` rad/frame) filters each "
            "frequency patch, and its magnitude is patchified into tokens that are fused with the standard ones. In "
            "the adaptive AaPE a small Transformer (the Lambda encoder) estimates `alpha` and `omega` for every "
            "patch from the input. The encoder is pre-trained without labels (EAT-style EMA teacher, inverse block "
            "masking, cross-attention predictor, utterance and multi-view contrastive losses) and fine-tuned or "
            "linearly probed."
        ),
        "paper": AAPE_PAPER,
        "benchmarks": ("AaPE-ViT", "SBLU", "features"),
    },
}

_CONFIG_CLASSES = {"fftp_ast": FFTPASTConfig, "fftp_aum": FFTPAuMConfig, "aape_vit": AaPEViTConfig}


def default_config(model_type: str):
    """The papers' main configuration of a model type: FFTP-AST ViT-B on 991 patches, FFTP-AuM base on 991 patches
    (the config defaults), AaPE-ViT ViT-B with the adaptive AaPE (608-frame pre-training crops); 527 AudioSet
    labels."""
    _check_model_type(model_type)
    return _CONFIG_CLASSES[model_type](num_labels=527)  # AudioSet's classes


def _check_model_type(model_type: str) -> None:
    if model_type not in _INFO:
        raise ValueError(f"`model_type` must be one of {sorted(_INFO)}, got {model_type!r}.")


def count_parameters(config) -> int:
    """Parameters of the audio-classification model for `config`, counted on the meta device (no memory, no init)."""
    from .modeling_aape_vit import AaPEViTForAudioClassification
    from .modeling_fftp_ast import FFTPASTForAudioClassification
    from .modeling_fftp_aum import FFTPAuMForAudioClassification

    model_class = {
        "fftp_ast": FFTPASTForAudioClassification,
        "fftp_aum": FFTPAuMForAudioClassification,
        "aape_vit": AaPEViTForAudioClassification,
    }[config.model_type]
    with torch.device("meta"):
        model = model_class(config)
    return sum(parameter.numel() for parameter in model.parameters())


def count_checkpoint_parameters(model_dir: str | os.PathLike) -> int | None:
    """Parameters stored in a directory's safetensors files, read from their headers (nothing is loaded)."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    if not files:
        return None
    total = 0
    for name in files:
        with safe_open(os.path.join(model_dir, name), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


# ----------------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------------


def _metadata(model_type: str, model_name: str, training: Mapping | None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if training and training.get("results"):
        results, args = training["results"], training.get("args") or {}
        dataset = args.get("dataset_name") or "unknown"
        eval_results = [
            EvalResult(
                task_type="audio-classification",
                dataset_type=str(dataset),
                dataset_name=str(dataset),
                dataset_config=args.get("dataset_config_name"),
                metric_type=metric,
                metric_name=metric,
                metric_value=round(float(results[f"eval_{metric}"]), 4),
            )
            for metric in ("mAP", "accuracy")
            if isinstance(results.get(f"eval_{metric}"), (int, float))
        ] or None
    datasets = list(_INFO[model_type]["datasets"])
    if training and (training.get("args") or {}).get("dataset_name"):
        # A checkpoint lists the dataset it was trained on, when that is a hub dataset ("owner/name", not a folder).
        name = str(training["args"]["dataset_name"])
        datasets = [name] if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name) else None
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="audio-classification",
        license="apache-2.0",
        tags=list(_INFO[model_type]["tags"]),
        datasets=datasets,
        metrics=["mean_average_precision", "accuracy"],
        model_name=model_name if eval_results else None,  # the hub needs a name only for model-index results
        eval_results=eval_results,
    )
    return "---\n" + data.to_yaml() + "\n---\n"


def _details_table(config, num_parameters: int | None) -> list[str]:
    model_type = config.model_type
    patch = patch_pair(config.patch_size)
    rows = [("model type", f"`{model_type}` (`{type(config).__name__}`)")]
    if model_type in ("fftp_ast", "fftp_aum"):
        stride = (config.frequency_stride, config.time_stride)
        kind = "full-frequency (FFTP)" if config.is_full_frequency else "square / 2-D grid"
        rows.append(
            ("patching", f"{kind}: patch {patch[0]} x {patch[1]} (mel x frames), stride {stride[0]} x {stride[1]}")
        )
        rows.append(
            (
                "patches",
                f"{config.num_patches} on {config.max_length} frames ({config.patch_grid[0]} x {config.patch_grid[1]} grid)",
            )
        )
    else:
        rows.append(("patching", f"{patch[0]} x {patch[1]} (mel x frames), non-overlapping"))
        rows.append(
            (
                "patches",
                f"{config.num_patches} on {config.max_length} frames ({config.patch_grid[0]} x {config.patch_grid[1]} grid)",
            )
        )
    rows.append(
        ("input", f"log-mel `(batch, frames, {config.num_mel_bins})` from `SpecPatchFeatureExtractor`, 16 kHz mono")
    )
    if model_type == "fftp_aum":
        rows.append(
            (
                "encoder",
                f"{config.num_hidden_layers} bidirectional Mamba blocks ({config.bimamba_type}), width "
                f"{config.hidden_size}, state size {config.state_size}, expand {config.expand}, conv {config.conv_kernel}",
            )
        )
    else:
        rows.append(
            (
                "encoder",
                f"ViT: {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, "
                f"MLP {config.intermediate_size}",
            )
        )
    if model_type == "aape_vit":
        rows.append(("patch embedding", f"`{config.patch_embedding_type}`"))
        if config.patch_embedding_type != "standard":
            rows.append(
                (
                    "SBLU",
                    f"H = {config.sblu_hidden_channels} channels per frequency patch, kernel {config.sblu_kernel_size}, "
                    f"stride {config.sblu_stride}, output width {config.sblu_output_dim}",
                )
            )
        if config.patch_embedding_type == "aape":
            rows.append(
                (
                    "Lambda encoder",
                    f"{config.lambda_num_layers} ViT blocks of width {config.lambda_hidden_size} "
                    f"({config.lambda_num_attention_heads} heads)",
                )
            )
    labels = getattr(config, "num_labels", None)
    if labels:
        rows.append(("labels", f"{labels} ({config.problem_type or 'problem type set at training'})"))
    if num_parameters is not None:
        rows.append(("parameters", f"{num_parameters:,} ({num_parameters / 1e6:.1f}M)"))
    return ["| | |", "|---|---|", *[f"| {key} | {value} |" for key, value in rows]]


def _usage(model_type: str, checkpoint: str) -> list[str]:
    name = _INFO[model_type]["name"]
    config_class = _CONFIG_CLASSES[model_type].__name__
    if model_type == "aape_vit":
        config_line = f"config = {config_class}()  # ViT-B with the adaptive AaPE, 6 s (608-frame) pre-training crops"
        inspect = "print(config.patch_grid, config.num_patches, config.patch_embedding_type)  # (8, 38) 304 aape"
    else:
        preset = "fftp-991"
        config_line = (
            f'config = {config_class}.from_preset("{preset}", num_labels=527)  # Table II patching, 991 patches'
        )
        inspect = "print(config.patch_size, config.time_stride, config.num_patches)  # [128, 10] 1 991"
    return [
        "## How to use",
        "",
        f"With the `specpatch` package installed, `import specpatch` registers {name} with "
        "transformers' Auto classes and the `audio-classification` pipeline:",
        "",
        "```python",
        "import numpy as np",
        "import torch",
        "from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline",
        "",
        "import specpatch  # noqa: F401  (registers the model types)",
        "",
        f'checkpoint = "{checkpoint}"  # a folder written by save_pretrained (e.g. by examples/finetune.py) or a hub id',
        "extractor = AutoFeatureExtractor.from_pretrained(checkpoint)",
        "model = AutoModelForAudioClassification.from_pretrained(checkpoint).eval()",
        "",
        '# 16 kHz mono audio; for a file: audio, _ = specpatch.audio_utils.load_audio("clip.wav", sampling_rate=16000)',
        "audio = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32)",
        'inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")  # input_values: (batch, frames, mel)',
        "with torch.no_grad():",
        "    logits = model(**inputs).logits",
        "top = logits[0].topk(min(3, logits.shape[-1]))",
        "print([(model.config.id2label[int(i)], round(float(s), 3)) for s, i in zip(top.values, top.indices)])",
        "",
        'classifier = pipeline("audio-classification", model=checkpoint)  # files, arrays or {"raw", "sampling_rate"}',
        "print(classifier(audio, top_k=3))",
        "```",
        "",
        "Without the package, the checkpoint's own copy of the model code loads with `trust_remote_code=True` (only "
        "torch, numpy, scipy and transformers are needed):",
        "",
        "```python",
        "import numpy as np",
        "import torch",
        "from transformers import AutoFeatureExtractor, AutoModelForAudioClassification",
        "",
        f'checkpoint = "{checkpoint}"',
        "extractor = AutoFeatureExtractor.from_pretrained(checkpoint, trust_remote_code=True)",
        "model = AutoModelForAudioClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()",
        "",
        "audio = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32)",
        'inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")',
        "with torch.no_grad():",
        "    probabilities = model(**inputs).logits.sigmoid()  # multi-label (AudioSet); softmax for single-label sets",
        "print(probabilities.shape)",
        "```",
        "",
        "The configuration of the paper's model, to train from scratch or to inspect:",
        "",
        "```python",
        f"from specpatch import {config_class}",
        "",
        config_line,
        inspect,
        "```",
    ]


def _training(model_type: str, training: Mapping | None, pretraining_script: bool) -> list[str]:
    lines = ["## Training", ""]
    if model_type in ("fftp_ast", "fftp_aum"):
        flag = "" if model_type == "fftp_ast" else " --model_type fftp_aum"
        lines += [
            "Trained from scratch, as in the FFTP paper (Sec. IV-A): 16 kHz mono audio, kaldi fbank as in AST "
            "(128 mel bins, 25 ms Hann window, 10 ms shift, `(fbank - mean) / (2 std)`); AudioSet-18k (balanced): "
            "1000 frames, 25 epochs, batch 32, waveform mixup (ratio 0.5), BCE, SpecMask with a budget of 25,600 cells "
            "and masks up to 128 x 128; Speech Commands V2: 128 frames, 20 epochs, batch 256, cross-entropy, SpecMask "
            "1,024 cells up to 128 x 16. AdamW, linear warm-up then cosine decay. The learning rate and warm-up are "
            "not given by the paper: the recipes use AST's values (marked *inferred* in `examples/finetune.py`).",
            "",
            "```bash",
            "# AudioSet-18k (agkphysics/AudioSet, balanced), SpecMask",
            f"accelerate launch examples/finetune.py --recipe fftp-audioset{flag}",
            "# the SpecAugment baseline (time masks <= 400 frames, frequency masks <= 5 bins)",
            f"accelerate launch examples/finetune.py --recipe fftp-audioset{flag} --masking specaugment",
            "# another Table II patching, e.g. 248 patches",
            f"accelerate launch examples/finetune.py --recipe fftp-audioset{flag} --config_overrides '{{\"time_stride\": 4}}'",
            "# Speech Commands V2, 35 words, official lists: python -m specpatch.speech_commands speech_commands_v0.02.tar.gz scv2",
            f"accelerate launch examples/finetune.py --recipe fftp-speechcommands{flag} --dataset_name scv2",
            "```",
        ]
        if model_type == "fftp_aum":
            lines += [
                "",
                "The default size is AuM-base (768 wide, 24 layers, Fo-Bi mixer); "
                "`--config_overrides '{\"hidden_size\": 192}'` gives AuM-tiny and 384 AuM-small.",
            ]
    else:
        pretrain = (
            [
                "```bash",
                "# Table I recipe on AS-2M (agkphysics/AudioSet config full, bal_train + unbal_train; labels unused)",
                "accelerate launch examples/pretrain_aape.py --recipe aape-as2m",
                "# a small model on the package's built-in dataset, offline (a smoke test of the whole chain)",
                "python examples/pretrain_aape.py",
                "```",
                "",
            ]
            if pretraining_script
            else []
        )
        lines += [
            "Self-supervised pre-training on AudioSet-2M without labels (Sec. III-D, IV-B): 6 s crops (608 frames, "
            "8 x 38 patches), an EMA teacher (momentum 0.994 to 1 on a cosine schedule) whose layer-averaged "
            "normalised outputs are the targets, inverse block masking of 80 % of the tokens with several masked "
            "views per clip, a 3-block cross-attention predictor on 75 % of the masked positions, an utterance loss on "
            "the class token and a multi-view InfoNCE with weight 0.1; AdamW, weight decay 0.05, batch 512, 600K "
            "steps. `AaPEViTForPreTraining` implements it (`loss = model(input_values).loss`, then "
            "`model.update_teacher(step, total_steps)` after each optimizer step).",
            "",
            *pretrain,
            "Fine-tuning (Table I of the paper): class token -> LayerNorm -> Linear, layer-wise learning-rate decay, "
            "mixup 0.8, SpecAugment of 1/5 of the input, drop path 0.1, weight EMA 0.995 (ESC-50: no mixup, no "
            "SpecAugment, no weight EMA). "
            "Peak learning rates and Adam betas were lost from the paper's text; the recipes use EAT's (marked "
            "*inferred*).",
            "",
            "```bash",
            "# <pre-trained AaPE-ViT>: the output folder of pretrain_aape.py (its student encoder is loaded, new head)",
            "accelerate launch examples/finetune.py --recipe aape-as20k --model_name_or_path <pre-trained AaPE-ViT>",
            "accelerate launch examples/finetune.py --recipe aape-as2m --model_name_or_path <pre-trained AaPE-ViT>",
            "accelerate launch examples/finetune.py --recipe aape-esc50 --model_name_or_path <pre-trained AaPE-ViT> --eval_fold 1",
            "accelerate launch examples/finetune.py --recipe aape-scv2 --model_name_or_path <pre-trained AaPE-ViT> --dataset_name scv2",
            "```",
        ]
    if training:
        lines += ["", *_training_run(training)]
    return lines


_RUN_ARG_KEYS = (
    "recipe",
    "dataset_name",
    "dataset_config_name",
    "max_length",
    "frontend",
    "num_epochs",
    "max_train_steps",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "layer_decay",
    "ema_decay",
    "loss",
    "mixup",
    "masking",
    "specmask_budget",
    "specmask_max_height",
    "specmask_max_width",
    "specaugment_freq",
    "specaugment_time",
    "seed",
)


def _training_run(training: Mapping) -> list[str]:
    results, args = training.get("results") or {}, training.get("args") or {}
    lines = ["### This checkpoint's training run", ""]
    recipe = args.get("recipe") or results.get("recipe")
    model_type = args.get("model_type") or results.get("model_type")
    if recipe:
        lines += [
            "```bash",
            f"accelerate launch examples/finetune.py --recipe {recipe}"
            + (f" --model_type {model_type}" if model_type else "")
            + "  # plus the overrides below",
            "```",
            "",
        ]
    if args:
        lines += ["Run arguments (`run_args.json`):", "", "| argument | value |", "|---|---|"]
        for key in _RUN_ARG_KEYS:
            if args.get(key) is not None:
                lines.append(
                    f"| `{key}` | `{json.dumps(args[key]) if not isinstance(args[key], str) else args[key]}` |"
                )
        if args.get("config_overrides"):
            lines.append(f"| `config_overrides` | `{json.dumps(args['config_overrides'])}` |")
        lines.append("")
    if results:
        lines += ["Results of the run (`all_results.json`, measured on its evaluation split):", ""]
        lines += ["| metric | value |", "|---|---|"]
        for key, value in results.items():
            if key.startswith("eval_") and isinstance(value, (int, float)):
                lines.append(
                    f"| {key[5:]} | {value:.4f} |" if isinstance(value, float) else f"| {key[5:]} | {value} |"
                )
        for key in ("global_step", "epochs_completed", "num_processes", "runtime_s"):
            if key in results:
                lines.append(f"| {key} | {results[key]} |")
    return lines


def _paper_results(model_type: str) -> list[str]:
    if model_type in ("fftp_ast", "fftp_aum"):
        family = "AST" if model_type == "fftp_ast" else "AuM"
        table = {
            "AST": [("AST, square patches", "11.25", "85.27"), ("AST with FFTP", "15.38", "93.73"),
                    ("AST with FFTP + SpecMask", "18.32", "95.94")],
            "AuM": [("AuM, square patches", "13.28", "91.58"), ("AuM with FFTP", "14.24", "94.68"),
                    ("AuM with FFTP + SpecMask", "17.59", "96.49")],
        }[family]  # fmt: skip
        lines = [
            "### Reported by the FFTP paper (not reproduced by this project)",
            "",
            f"From-scratch training, Table I of {FFTP_PAPER} (models without SpecMask use SpecAugment):",
            "",
            "| model | AudioSet-18k mAP (%) | Speech Commands V2 accuracy (%) |",
            "|---|---:|---:|",
            *[f"| {name} | {mean_ap} | {acc} |" for name, mean_ap, acc in table],
        ]
        if model_type == "fftp_ast":
            lines += [
                "",
                "Table III of the paper (AST on AudioSet-18k, one A100, 10 s input; the GFLOPs column counts "
                "multiply-accumulates of the linear layers and the patch convolution):",
                "",
                "| patches | GFLOPs | training (h) | inference (ms) | mAP (%) |",
                "|---:|---:|---:|---:|---:|",
                "| 1212 (square) | 103.35 | 5.3 | 14.50 | 11.25 |",
                "| 96 | 4.15 | 2.3 | 0.96 | 14.54 |",
                "| 196 | 17.30 | 2.5 | 2.18 | 17.15 |",
                "| 248 | 21.48 | 2.6 | 2.62 | 17.67 |",
                "| 496 | 42.79 | 2.8 | 5.38 | 18.01 |",
                "| 991 | 85.32 | 5.2 | 11.62 | 18.32 |",
                "",
                "The 96-patch row's 4.15 GFLOPs does not fit the others (a ViT-B on 96 tokens is about 8.8 GMACs, "
                "which this project measures).",
            ]
        return lines
    return [
        "### Reported by the AaPE paper (not reproduced by this project)",
        "",
        f"Pre-trained on AudioSet-2M, then fine-tuned (Table III of {AAPE_PAPER}; 87M parameters):",
        "",
        "| AS-2M mAP (%) | AS-20K mAP (%) | ESC-50 accuracy (%) | SCV2 accuracy (%) |",
        "|---:|---:|---:|---:|",
        "| 49.8 | 41.9 | 97.5 | 97.9 |",
        "",
        "Linear probing (Table IV): US8K 89.7 %, NSynth 80.5 %, CREMA-D 68.7 %.",
        "",
        "Ablations (Tables V-VI, fine-tuning, contrastive weight 0.1):",
        "",
        "| patch embedding | parameters (patch embedding) | AS-2M mAP | AS-20K mAP | ESC-50 acc. |",
        "|---|---:|---:|---:|---:|",
        "| standard | 0.43M | 45.8 | 35.6 | 93.6 |",
        "| AaPE, non-adaptive SBLU | 1.16M | 49.7 | 41.7 | 97.2 |",
        "| AaPE, adaptive SBLU | 1.86M | 49.8 | 41.9 | 97.5 |",
    ]


def _limitations(model_type: str) -> list[str]:
    lines = ["## Limitations", ""]
    if model_type == "aape_vit":
        lines += [
            "- The copy of the AaPE paper this implementation follows lost most of its inline math and several "
            "values. Values that had to be inferred are config fields with documented defaults (`AaPEViTConfig`, "
            '"inferred"): SBLU channels H = 16, kernel 63, stride 4, output width 144, attenuation threshold 0.01, '
            "Lambda encoder width 128 with 3 blocks, number of masked views 16, mask block sizes 3-5, contrastive "
            "temperature 0.1, the feature normalisation statistics, peak learning rates. Parameter counts match the "
            "paper's (0.43M / 1.16M / 1.86M patch embeddings, 87M encoder).",
            "- The log-mel normalisation statistics of the paper were lost: compute them on your training data "
            "(`SpecPatchFeatureExtractor.compute_normalization_stats`, or `--norm_stats compute`).",
        ]
    else:
        lines.append("- The FFTP paper gives no learning rate or warm-up; the recipes use AST's values.")
        if model_type == "fftp_ast":
            lines.append(
                "- FFTP models are trained from scratch in the paper; `FFTPASTForAudioClassification.from_ast` can "
                "start from transformers' AST weights (positions interpolated, patch kernel resized), which the paper "
                "did not do."
            )
        if model_type == "fftp_aum":
            lines.append(
                "- Without `mamba_ssm` the selective scan runs in PyTorch (chunked parallel scan): correct on every "
                "device, slower than the fused CUDA kernel on a GPU."
            )
    lines.append(
        "- Trained on AudioSet, the models inherit its label noise and its bias towards sounds common on YouTube."
    )
    return lines


def efficiency_section(results_markdown: str | None, model_type: str) -> list[str]:
    """The parts of `benchmarks/RESULTS.md` that concern a model (machine, summary rows, per-patching table), quoted
    as this project's measurements."""
    lines = ["## Efficiency (measured by this project)", ""]
    if not results_markdown:
        return lines + [
            "Run `python benchmarks/run_all.py` to measure (results go to `benchmarks/RESULTS.md`).",
        ]
    text = results_markdown
    generated = re.search(r"^Generated by `([^`]*)`[^\n]*? on (\d{4}-\d{2}-\d{2}[^,.]*)", text, re.MULTILINE)
    machine = re.search(r"^## Machine\n\n((?:- .*\n)+)", text, re.MULTILINE)
    run = f"`{generated.group(1)}`, {generated.group(2)}" if generated else "`benchmarks/run_all.py`"
    lines.append(
        f"Measured by the specpatch project ({run}; random weights; ratios measured side by side in one process, "
        "absolute times are the machine's), not by the papers' authors."
    )
    if machine:
        lines += ["", *machine.group(1).rstrip("\n").splitlines()]
    summary = re.search(r"^## Summary.*?\n\n(\|.*?)(?:\n\n|\Z)", text, re.MULTILINE | re.DOTALL)
    if summary:
        table = summary.group(1).splitlines()
        wanted = _INFO[model_type]["benchmarks"]
        rows = [row for row in table[2:] if row.split("|")[1].strip() in wanted]
        if rows:
            lines += ["", *table[:2], *rows]
    if model_type in ("fftp_ast", "fftp_aum"):
        presets = re.search(
            r"^## Patch count and cost.*?\n\n(.*?)\n\n(\|.*?)(?:\n\n|\Z)", text, re.MULTILINE | re.DOTALL
        )
        if presets:
            lines += ["", presets.group(1), "", *presets.group(2).splitlines()]
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# Cards
# ----------------------------------------------------------------------------------------------------------------------


def render_model_card(
    model_type: str,
    config=None,
    num_parameters: int | None = None,
    training: Mapping | None = None,
    results_markdown: str | None = None,
    checkpoint: str | None = None,
    pretraining_script: bool = False,
) -> str:
    """A hub model card (YAML metadata + markdown) for a model type.

    Args:
        model_type: `"fftp_ast"`, `"fftp_aum"` or `"aape_vit"`.
        config: the checkpoint's config (default: `default_config(model_type)`, the papers' model).
        num_parameters: parameter count to state (default: counted for `config` on the meta device).
        training: `{"results": all_results.json, "args": run_args.json}` of the run that trained the checkpoint.
        results_markdown: text of `benchmarks/RESULTS.md`, for the efficiency section.
        checkpoint: folder or hub id the code snippets load (default: `CHECKPOINT_PLACEHOLDERS[model_type]`).
        pretraining_script: whether `examples/pretrain_aape.py` exists to be shown (AaPE-ViT).
    """
    _check_model_type(model_type)
    config = config if config is not None else default_config(model_type)
    if config.model_type != model_type:
        raise ValueError(f"The config is for {config.model_type!r}, not {model_type!r}.")
    info = _INFO[model_type]
    num_parameters = num_parameters if num_parameters is not None else count_parameters(config)
    checkpoint = checkpoint or CHECKPOINT_PLACEHOLDERS[model_type]
    lines = [
        f"# {info['name']}: {info['title']}",
        "",
        info["summary"],
        "",
        f"Paper: {info['paper']}. Implementation: the `specpatch` package, which makes it a native 🤗 transformers "
        "model (Auto classes, pipeline, safetensors checkpoints, `trust_remote_code` loading).",
        "",
        "## Model details",
        "",
        *_details_table(config, num_parameters),
        "",
        *_usage(model_type, checkpoint),
        "",
        *_training(model_type, training, pretraining_script),
        "",
        "## Evaluation results",
        "",
    ]
    if not training or not (training.get("results") or {}):
        lines += [
            "This card describes the architecture and recipe; `python examples/write_model_card.py <checkpoint>` "
            "writes a card with the results of a trained checkpoint's own run.",
            "",
        ]
    else:
        lines += ["This checkpoint: see *This checkpoint's training run* above.", ""]
    lines += [*_paper_results(model_type), "", *efficiency_section(results_markdown, model_type), ""]
    lines += [*_limitations(model_type), ""]
    return _metadata(model_type, info["name"], training) + "\n" + "\n".join(lines).rstrip() + "\n"


def write_model_card(
    model_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    checkpoint: str | None = None,
    results_markdown: str | None = None,
    pretraining_script: bool = False,
) -> str:
    """Writes the card of a `save_pretrained` directory (default: its `README.md`) from its `config.json`, its
    safetensors parameter count and, when present, the `all_results.json` / `run_args.json` of its training run.

    Args:
        model_dir: the checkpoint directory.
        output: card path (default `model_dir/README.md`).
        checkpoint: what the card's code loads (default: `model_dir` as given; pass the hub id before uploading).
        results_markdown: text of `benchmarks/RESULTS.md` for the efficiency section.
        pretraining_script: whether to show `examples/pretrain_aape.py` (AaPE-ViT).

    Returns:
        The path written.
    """
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{model_dir!r} has no config.json: expected a save_pretrained directory.")
    with open(config_path) as handle:
        model_type = json.load(handle).get("model_type")
    _check_model_type(model_type)
    config = _CONFIG_CLASSES[model_type].from_pretrained(model_dir)
    training = {}
    for key, name in (("results", "all_results.json"), ("args", "run_args.json")):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path) as handle:
                training[key] = json.load(handle)
    num_parameters = count_checkpoint_parameters(model_dir)
    card = render_model_card(
        model_type,
        config=config,
        num_parameters=num_parameters,
        training=training or None,
        results_markdown=results_markdown,
        checkpoint=checkpoint or model_dir,
        pretraining_script=pretraining_script,
    )
    output = os.fspath(output) if output is not None else os.path.join(model_dir, "README.md")
    with open(output, "w") as handle:
        handle.write(card)
    return output


__all__ = [
    "CARD_FILES",
    "CHECKPOINT_PLACEHOLDERS",
    "count_checkpoint_parameters",
    "count_parameters",
    "default_config",
    "efficiency_section",
    "render_model_card",
    "write_model_card",
]
