#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Fine-tune (or train from scratch) FFTP-AST, FFTP-AuM or AaPE-ViT for audio classification with accelerate.

With no arguments it runs the README's main job offline: a small FFTP-AST trained on the package's built-in synthetic
multi-label dataset, evaluated (mAP) on its held-out split, saved with `save_pretrained`, and used once through
`pipeline("audio-classification")`.

    python examples/finetune.py                                      # the built-in job (CPU, a few minutes)
    accelerate launch examples/finetune.py --recipe fftp-audioset    # FFTP paper, AudioSet-18k (agkphysics/AudioSet)
    accelerate launch examples/finetune.py --recipe aape-as20k --model_name_or_path <pre-trained AaPE-ViT>
    accelerate launch examples/finetune.py --recipe aape-esc50 --dataset_name ashraq/esc50 --eval_fold 1 ...
    accelerate launch examples/finetune.py --recipe fftp-speechcommands --dataset_name scv2  # 35 words, see below
    python examples/finetune.py --list_recipes

The same command runs on CPU, one GPU or many (`accelerate launch --num_processes N`, `--multi_gpu`, several
machines). Several processes on a CPU-only machine: `accelerate launch --multi_gpu --num_processes N` (the script
then joins them with gloo; `accelerate launch --cpu --num_processes N` starts a single process unless MPI is set up). `--batch_size` is the global batch of the papers: each process gets `batch_size / (processes x
gradient_accumulation_steps)` clips per micro-batch. Every flag overrides the selected recipe's value. Supported
engines: one process and DDP; FSDP / DeepSpeed are refused with a clear error (`training.check_distributed_engine`).

Speech Commands V2 (`fftp-speechcommands`, `aape-scv2`): 35 words, official training / validation / testing lists
(11,005 test clips). Build `scv2` once with `python -m specpatch.speech_commands speech_commands_v0.02.tar.gz scv2`;
the recipes' `--protocol speech_commands_v2` also filters a hub copy's `_silence_` rows and refuses its 12-class test
split. As in AST's and EAT's code, the recipes select the model on the validation list (`--validation_split
validation`, evaluated after every epoch or every `--eval_steps`; `--selection_metric`, accuracy by default) and report
the test accuracy of the selected state (`eval_accuracy` in `all_results.json`, beside its `validation_*` metrics and
`selected_step`); that state is the saved model. Without `--validation_split` (AudioSet, ESC-50) the final state is
evaluated on `--eval_split` and saved. AudioSet (`agkphysics/AudioSet`): AS-20K is config `balanced` (train / test); AS-2M (`aape-as2m`) is config
`full` with `--train_split bal_train+unbal_train --eval_split eval`.

Mixup: the FFTP recipes use AST's waveform mixup (`--mixup_type waveform`), the AaPE recipes EAT's timm-style batch
mixup of the normalised spectrogram (`--mixup_type spectrogram`, lambda ~ Beta(0.8, 0.8) with probability 0.9).

Data flow (`specpatch.data.AudioData`): rows keep their encoded audio (`Audio(decode=False)`); the DataLoader workers
decode, resample (soxr) and truncate the clips (corrupt ones are skipped and counted over all processes); mixup, the
batched log-mel front end and SpecMask / SpecAugment run on the training device. The loop's bookkeeping is
`specpatch.training.TrainingLoop`. Checkpoints (`accelerator.save_state`: model, optimizer, scheduler,
EMA, loop position, RNG states) are written every `--checkpointing_steps` optimizer steps; `--resume` continues from
the latest one, mid-epoch, on the same data order (streaming too: each process at its own position).
"""

from __future__ import annotations

import os

# OpenMP threads that sleep instead of spinning while they wait: the DataLoader workers share the cores with the
# training threads, and on a busy CPU spinning threads made a training step several times slower (measured: 6.2 s vs
# 0.7 s per step of the built-in job on 2 loaded cores). Must be set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import specpatch  # noqa: F401  (registers the models with the Auto classes and the pipeline)
from specpatch.audio_utils import load_audio
from specpatch.augmentation import SpecAugment, SpecMask, WaveformMixup
from specpatch.data import AudioData, add_data_arguments
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.metrics import classification_metrics
from specpatch.mixup import SpectrogramMixup
from specpatch.training import (
    ModelSelection,
    TrainingLoop,
    WeightEMA,
    add_optimization_arguments,
    add_run_arguments,
    apply_recipe,
    build_optimizer,
    check_distributed_engine,
    cosine_schedule_with_warmup,
    end_training,
    make_accelerator,
    parse_config_overrides,
    per_device_batch_size,
    prepare_output_dir,
    resolve_resume_path,
    shared_normalization_stats,
    total_training_steps,
)

logger = logging.getLogger("specpatch.finetune")

MODEL_TYPES = ("fftp_ast", "fftp_aum", "aape_vit")

# Small model of the built-in job: about 0.4M parameters, 49 tokens on 2 s clips.
_SMALL = {"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256}
_SMALL_FFTP = {"patch_size": [128, 8], "frequency_stride": 128, "time_stride": 4}

# Named recipes. Keys are argument names; values marked "inferred" are not given by the papers (the FFTP paper gives no
# learning rate or warm-up; the AaPE text lost its peak learning rates and Adam betas): they are AST's / EAT's values.
RECIPES: dict[str, dict] = {
    "builtin": {
        "description": "README main job: small FFTP-AST on the built-in synthetic multi-label dataset (CPU, minutes).",
        "dataset_name": "builtin",
        "model_type": "fftp_ast",
        "config_overrides": {"*": _SMALL, "fftp_ast": _SMALL_FFTP, "fftp_aum": _SMALL_FFTP},
        "max_length": 200,  # 2 s clips: 198 kaldi frames
        "frontend": "kaldi",
        "norm_stats": "compute",
        "num_epochs": 8,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "warmup_steps": 40,
        "weight_decay": 0.05,
        "loss": "bce",
        "mixup": 0.0,
        "masking": "specmask",
        "specmask_budget": 5120,  # 20 % of 128 x 200, as 25,600 is 20 % of 128 x 1000
        "specmask_max_height": 128,
        "specmask_max_width": 26,  # 128 / 1000 of the frames, as in the AudioSet setting
        "specaugment_freq": 5,
        "specaugment_time": 80,
        "checkpointing_steps": 100,
        "num_workers": 1,
    },
    "fftp-audioset": {
        "description": "FFTP paper, AudioSet-18k (agkphysics/AudioSet config balanced: train = bal_train, test = eval): "
        "25 epochs, batch 32, AST's waveform mixup 0.5, BCE, SpecMask 25,600 max 128x128 (or SpecAugment 400 frames "
        "/ 5 bins), 1000 frames.",
        "dataset_name": "agkphysics/AudioSet",
        "dataset_config_name": "balanced",
        "balanced_sampling": "false",  # AST samples the balanced subset uniformly; weights are for the full set
        "model_type": "fftp_ast",
        "max_length": 1000,
        "frontend": "kaldi",
        "norm_mean": -4.2677393,
        "norm_std": 4.5689974,
        "num_epochs": 25,
        "batch_size": 32,
        "learning_rate": 1e-4,  # inferred (not in the paper)
        "warmup_steps": 1000,  # inferred (AST)
        "weight_decay": 0.05,  # inferred
        "loss": "bce",
        "mixup": 0.5,
        "mixup_alpha": 10.0,
        "masking": "specmask",
        "specmask_budget": 25600,
        "specmask_max_height": 128,
        "specmask_max_width": 128,
        "specaugment_freq": 5,
        "specaugment_time": 400,
    },
    "fftp-speechcommands": {
        "description": "FFTP paper, Speech Commands v2 (35 words; official train / validation_list / testing_list, "
        "11,005 test clips; the best-validation epoch's test accuracy, as AST's recipe): 20 epochs, batch 256, CE, 128 "
        "frames, SpecMask 1,024 max 128x16 (or SpecAugment 15 frames / 5 bins). Needs --dataset_name: a folder from "
        "`python -m specpatch.speech_commands`.",
        "model_type": "fftp_ast",
        "protocol": "speech_commands_v2",
        "eval_split": "test",
        "validation_split": "validation",  # AST / EAT: model selection on validation_list.txt
        "max_length": 128,
        "frontend": "kaldi",
        "norm_mean": -6.845978,
        "norm_std": 5.5654526,
        "num_epochs": 20,
        "batch_size": 256,
        "learning_rate": 2.5e-4,  # inferred (AST's Speech Commands value)
        "warmup_steps": 1000,  # inferred
        "weight_decay": 0.05,  # inferred
        "loss": "ce",
        "mixup": 0.0,
        "masking": "specmask",
        "specmask_budget": 1024,
        "specmask_max_height": 128,
        "specmask_max_width": 16,
        "specaugment_freq": 5,
        "specaugment_time": 15,
    },
    "aape-as20k": {
        "description": "AaPE paper Table I, AS-20K (agkphysics/AudioSet config balanced: train = bal_train, test = "
        "eval): 40K steps, 4K warm-up, batch 128, layer decay 0.70, EAT's spectrogram mixup 0.8, drop path 0.1, "
        "weight EMA 0.995, SpecAugment 1/5 of the input, BCE.",
        "dataset_name": "agkphysics/AudioSet",
        "dataset_config_name": "balanced",
        "balanced_sampling": "false",
        "model_type": "aape_vit",
        "max_length": 1024,
        "frontend": "logmel",
        "max_train_steps": 40_000,
        "warmup_steps": 4_000,
        "batch_size": 128,
        "learning_rate": 5e-5,  # inferred (EAT)
        "adam_beta2": 0.95,  # inferred (EAT)
        "weight_decay": 0.05,
        "layer_decay": 0.70,
        "drop_path_rate": 0.1,
        "ema_decay": 0.995,
        "loss": "bce",
        "mixup": 0.9,  # EAT: mixup_prob 0.9 (timm batch mode)
        "mixup_type": "spectrogram",
        "mixup_alpha": 0.8,  # Table I "mixup 0.8" = EAT's mixup (Beta alpha)
        "layer_decay_stem": "full",  # EAT's code decays only the Transformer blocks (see --layer_decay_stem)
        "masking": "specaugment",
        "specaugment_freq": 25,  # 128 / 5
        "specaugment_time": 204,  # 1024 / 5
    },
    "aape-as2m": {
        "description": "AaPE paper Table I, AS-2M (agkphysics/AudioSet config full, bal_train + unbal_train joined, "
        "evaluated on eval): 300K steps, 30K warm-up, batch 128, layer decay 0.70, EAT's spectrogram mixup 0.8, "
        "drop path 0.1, weight EMA 0.995, SpecAugment 1/5, BCE, balanced sampling.",
        "dataset_name": "agkphysics/AudioSet",
        "dataset_config_name": "full",
        "train_split": "bal_train+unbal_train",
        "eval_split": "eval",
        "balanced_sampling": "true",
        "model_type": "aape_vit",
        "max_length": 1024,
        "frontend": "logmel",
        "max_train_steps": 300_000,
        "warmup_steps": 30_000,
        "batch_size": 128,
        "learning_rate": 5e-5,  # inferred (EAT)
        "adam_beta2": 0.95,  # inferred (EAT)
        "weight_decay": 0.05,
        "layer_decay": 0.70,
        "drop_path_rate": 0.1,
        "ema_decay": 0.995,
        "loss": "bce",
        "mixup": 0.9,  # EAT: mixup_prob 0.9 (timm batch mode)
        "mixup_type": "spectrogram",
        "mixup_alpha": 0.8,  # Table I "mixup 0.8" = EAT's mixup (Beta alpha)
        "layer_decay_stem": "full",  # EAT's code decays only the Transformer blocks (see --layer_decay_stem)
        "masking": "specaugment",
        "specaugment_freq": 25,
        "specaugment_time": 204,
    },
    "aape-esc50": {
        "description": "AaPE paper Table I, ESC-50 (one fold held out): 8K steps, 800 warm-up, batch 128, layer decay "
        "0.65, drop path 0.1, no mixup, no augmentation, no weight EMA, CE.",
        "dataset_name": "ashraq/esc50",
        "model_type": "aape_vit",
        "max_length": 512,
        "frontend": "logmel",
        "eval_fold": 1,
        "max_train_steps": 8_000,
        "warmup_steps": 800,
        "batch_size": 128,
        "learning_rate": 5e-5,  # inferred (EAT)
        "adam_beta2": 0.95,  # inferred (EAT)
        "weight_decay": 0.05,
        "layer_decay": 0.65,
        "drop_path_rate": 0.1,
        "ema_decay": 0.0,
        "loss": "ce",
        "mixup": 0.0,
        "layer_decay_stem": "full",  # EAT's code decays only the Transformer blocks
        "masking": "none",
        "specaugment_freq": 25,
        "specaugment_time": 102,
    },
    "aape-scv2": {
        "description": "AaPE paper Table I, Speech Commands v2 (35 words, official splits, 11,005 test clips; the "
        "best-validation state's test accuracy, as EAT's fairseq `best_checkpoint_metric: accuracy`): 160K steps, 16K "
        "warm-up, batch 128, layer decay 0.75, EAT's spectrogram mixup 0.8 (hence BCE), drop path 0.1, weight EMA "
        "0.995, SpecAugment 1/5. Needs --dataset_name: a folder from `python -m specpatch.speech_commands`.",
        "model_type": "aape_vit",
        "protocol": "speech_commands_v2",
        "eval_split": "test",
        "validation_split": "validation",  # EAT: checkpoint_best by validation accuracy, validated every epoch
        "max_length": 128,
        "frontend": "logmel",
        "max_train_steps": 160_000,
        "warmup_steps": 16_000,
        "batch_size": 128,
        "learning_rate": 1e-4,  # inferred (EAT)
        "adam_beta2": 0.95,  # inferred (EAT)
        "weight_decay": 0.05,
        "layer_decay": 0.75,
        "drop_path_rate": 0.1,
        "ema_decay": 0.995,
        "loss": "bce",
        "mixup": 0.9,  # EAT: mixup_prob 0.9 (timm batch mode)
        "mixup_type": "spectrogram",
        "mixup_alpha": 0.8,  # Table I "mixup 0.8" = EAT's mixup (Beta alpha)
        "layer_decay_stem": "full",  # EAT's code decays only the Transformer blocks (see --layer_decay_stem)
        "masking": "specaugment",
        "specaugment_freq": 25,
        "specaugment_time": 25,
    },
}

# Fallbacks for values neither a flag nor the recipe sets.
DEFAULTS: dict = {
    "dataset_name": None,
    "dataset_config_name": None,
    "train_split": "train",
    "eval_split": None,
    "validation_split": None,
    "selection_metric": "auto",
    "protocol": "none",
    "model_type": "fftp_ast",
    "config_overrides": None,
    "max_length": None,
    "frontend": None,
    "norm_mean": None,
    "norm_std": None,
    "norm_stats": "recipe",
    "num_epochs": 10,
    "max_train_steps": None,
    "batch_size": 32,
    "learning_rate": 1e-4,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "weight_decay": 0.05,
    "warmup_steps": None,
    "warmup_ratio": 0.1,
    "min_lr_ratio": 0.0,
    "max_grad_norm": 1.0,
    "layer_decay": None,
    "layer_decay_stem": "decayed",
    "drop_path_rate": None,
    "ema_decay": 0.0,
    "loss": "auto",
    "mixup": 0.0,
    "mixup_type": "waveform",
    "mixup_alpha": 10.0,
    "masking": "none",
    "specmask_budget": 25600,
    "specmask_max_height": 128,
    "specmask_max_width": 128,
    "specaugment_freq": 5,
    "specaugment_time": 400,
    "eval_fold": None,
    "balanced_sampling": "auto",
    "checkpointing_steps": 1000,
    "num_workers": 2,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="builtin", choices=sorted(RECIPES), help="Named settings; flags override them.")
    p.add_argument("--list_recipes", action="store_true", help="Print the recipes and exit.")
    g = p.add_argument_group("model")
    g.add_argument("--model_type", choices=MODEL_TYPES, help="Architecture when training from scratch.")
    g.add_argument("--model_name_or_path", help="Checkpoint (local folder or hub id) to start from; head resized.")
    g.add_argument("--config_overrides", help='Config fields: JSON (\'{"hidden_size": 192}\', optionally keyed by '
                   'model type or "*") or key=value pairs ("hidden_size=192,num_hidden_layers=6").')
    g.add_argument("--drop_path_rate", type=float)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g = add_data_arguments(p, labeled=True)
    g.add_argument("--frontend", choices=("kaldi", "logmel"))
    g.add_argument("--norm_stats", choices=("recipe", "compute"), help="compute: mean/std of the training log-mel.")
    g.add_argument("--balanced_sampling", choices=("auto", "true", "false"),
                   help="AST's class-balanced sampling (auto: on for multi-label data, map-style only).")
    g = add_optimization_arguments(p)
    g.add_argument("--warmup_ratio", type=float, help="Warm-up share of the steps when --warmup_steps is unset.")
    g.add_argument("--layer_decay", type=float, help="Layer-wise lr decay (BEiT); none = off.")
    g.add_argument("--layer_decay_stem", choices=("decayed", "full"),
                   help="Learning rate of the input stem (patch embedding; AaPE's SBLU, Lambda encoder and fusion; "
                   "positions, class tokens) under layer decay: 'decayed' (BEiT: layer_decay ** (layers + 1)) or "
                   "'full' (EAT's fine-tuning code, which decays only the Transformer blocks; the AaPE recipes).")
    g.add_argument("--ema_decay", type=float, help="Weight EMA decay; 0 = off. Evaluation and the saved model use it.")
    g.add_argument("--loss", choices=("auto", "ce", "bce"), help="auto: BCE for multi-label data, CE otherwise.")
    g.add_argument("--mixup", type=float, help="Mixup probability (waveform: per clip; spectrogram: per batch); 0 = off.")
    g.add_argument("--mixup_type", choices=("waveform", "spectrogram"),
                   help="waveform: AST's mixup before the front end (FFTP recipes); spectrogram: EAT's timm-style "
                   "batch mixup of the normalised log-mel (AaPE recipes). See specpatch/mixup.py.")
    g.add_argument("--mixup_alpha", type=float, help="Beta(alpha, alpha) of the mixing weight (AST 10, EAT 0.8).")
    g.add_argument("--masking", choices=("specmask", "specaugment", "none"))
    g.add_argument("--specmask_budget", type=int)
    g.add_argument("--specmask_max_height", type=int)
    g.add_argument("--specmask_max_width", type=int)
    g.add_argument("--specaugment_freq", type=int)
    g.add_argument("--specaugment_time", type=int)
    g = add_run_arguments(p)
    g.add_argument("--eval_steps", type=int, help="Evaluate every N steps (default: at the end of each epoch).")
    g.add_argument("--selection_metric", choices=("auto", "accuracy", "mAP"),
                   help="With --validation_split: the validation metric that selects the model (auto: accuracy for "
                   "single-label data, as AST / EAT on Speech Commands; mAP for multi-label data).")
    g.add_argument("--no_pipeline_demo", action="store_true", help="Skip classifying one clip with the pipeline.")
    args = p.parse_args(argv)

    apply_recipe(args, RECIPES, DEFAULTS)
    if args.output_dir is None:
        args.output_dir = os.path.join("outputs", f"{args.recipe}-{args.model_type}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Model and features
# ----------------------------------------------------------------------------------------------------------------


def config_overrides_for(args) -> dict:
    """`--config_overrides` (JSON or key=value pairs); a JSON object keyed by model type and / or "*" gives the
    fields of `--model_type`."""
    overrides = parse_config_overrides(args.config_overrides)
    if "*" in overrides or any(k in MODEL_TYPES for k in overrides):
        overrides = {**overrides.get("*", {}), **overrides.get(args.model_type, {})}
    return dict(overrides)


def build_model(args, label_map):
    """From scratch through `AutoConfig.for_model(model_type)`, or from `--model_name_or_path` with a new head."""
    from transformers import AutoConfig, AutoModelForAudioClassification

    label_fields = {
        "num_labels": label_map.num_labels,
        "id2label": label_map.id2label,
        "label2id": label_map.label2id,
        "problem_type": label_map.problem_type,
    }
    wanted = config_overrides_for(args)
    if args.max_length is not None:
        wanted.setdefault("max_length", args.max_length)
    if args.drop_path_rate is not None:
        wanted["drop_path_rate"] = args.drop_path_rate

    if args.model_name_or_path:
        config = AutoConfig.from_pretrained(args.model_name_or_path)
        known = {k: v for k, v in wanted.items() if hasattr(config, k) and k != "max_length"}
        config.update({**known, **label_fields})
        return AutoModelForAudioClassification.from_pretrained(
            args.model_name_or_path, config=config, ignore_mismatched_sizes=True
        )
    default = AutoConfig.for_model(args.model_type)
    skipped = sorted(k for k in wanted if not hasattr(default, k))
    if skipped:
        logger.info("Config fields %s do not exist for %s; ignored.", skipped, args.model_type)
    config = AutoConfig.for_model(args.model_type, **{k: v for k, v in wanted.items() if hasattr(default, k)},
                                  **label_fields)
    return AutoModelForAudioClassification.from_config(config)


def build_feature_extractor(args) -> SpecPatchFeatureExtractor:
    """The checkpoint's feature extractor when it has one (so fine-tuning sees the pre-training features), else a new
    one with the recipe's front end, frames and normalisation; flags override either."""
    extractor = None
    if args.model_name_or_path:
        try:
            from transformers import AutoFeatureExtractor

            extractor = AutoFeatureExtractor.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError):
            extractor = None
    frontend = args.frontend or ("logmel" if args.model_type == "aape_vit" else "kaldi")
    if extractor is None:
        extractor = SpecPatchFeatureExtractor(
            sampling_rate=args.sampling_rate, max_length=args.max_length or 1024, frontend=frontend,
            mean=args.norm_mean, std=args.norm_std,
        )
    else:
        if args.max_length is not None:
            extractor.max_length = int(args.max_length)
        if args.norm_mean is not None:
            extractor.mean = float(args.norm_mean)
        if args.norm_std is not None:
            extractor.std = float(args.norm_std)
    if extractor.sampling_rate != args.sampling_rate:
        args.sampling_rate = extractor.sampling_rate
    return extractor


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def loss_function(kind: str, logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """BCE-with-logits on (soft) multi-hot targets, or cross-entropy on indices / soft targets."""
    logits = logits.float()
    if kind == "bce":
        if targets.dim() == 1:
            targets = F.one_hot(targets.long(), logits.shape[-1]).float()
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if multi_label:
        raise ValueError("Cross-entropy needs single-label data; use --loss bce for multi-label sets.")
    return F.cross_entropy(logits, targets if targets.is_floating_point() else targets.long())


def build_masking(args):
    if args.masking == "specmask":
        return SpecMask(budget=args.specmask_budget, max_height=args.specmask_max_height,
                        max_width=args.specmask_max_width)
    if args.masking == "specaugment":
        return SpecAugment(freq_mask_param=args.specaugment_freq, time_mask_param=args.specaugment_time)
    return None


@torch.no_grad()
def evaluate(model, loader, extractor, accelerator, device) -> tuple[dict, np.ndarray, np.ndarray, int]:
    """Logits and labels of the whole evaluation split (gathered from every process), metrics, skipped clips."""
    model.eval()
    logits, labels, skipped = [], [], 0
    for batch in loader:
        skipped += int(batch["skipped_index"].numel())
        if batch["waveforms"].shape[0] == 0:
            continue
        features, _ = extractor.extract_features(batch["waveforms"].to(device), batch["lengths"].to(device))
        with accelerator.autocast():
            out = model(input_values=features).logits
        logits.append(out.float().cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    from accelerate.utils import gather_object

    parts = gather_object([(np.concatenate(logits) if logits else None, np.concatenate(labels) if labels else None,
                            skipped)])
    all_logits = np.concatenate([p[0] for p in parts if p[0] is not None])
    all_labels = np.concatenate([p[1] for p in parts if p[1] is not None])
    total_skipped = sum(p[2] for p in parts)
    multi_label = all_labels.ndim == 2
    return classification_metrics(all_logits, all_labels, multi_label), all_logits, all_labels, total_skipped


def build_mixup(args, label_map):
    """AST's waveform mixup (FFTP recipes) or EAT's timm-style spectrogram mixup (AaPE recipes); None when off."""
    if not args.mixup or args.mixup <= 0:
        return None
    if args.mixup_type == "spectrogram":
        return SpectrogramMixup(alpha=args.mixup_alpha, prob=args.mixup, num_classes=label_map.num_labels)
    return WaveformMixup(prob=args.mixup, alpha=args.mixup_alpha, num_classes=label_map.num_labels)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.list_recipes:
        for name, recipe in sorted(RECIPES.items()):
            print(f"{name}: {recipe['description']}")
        return {}

    # Recipe -> accelerator, data, model, optimisation -> loop -> evaluation and saving.
    accelerator = make_accelerator(args)
    check_distributed_engine(accelerator)
    start_time = time.time()
    if args.model_name_or_path is None and args.model_type not in MODEL_TYPES:
        raise ValueError(f"--model_type must be one of {MODEL_TYPES}.")
    prepare_output_dir(args)

    extractor = build_feature_extractor(args)
    data = AudioData(args, accelerator, extractor, labeled=True)
    label_map = data.label_map
    def rows(split):
        return len(split) if split is not None and not args.streaming else split

    logger.info("Classes: %d (%s), train rows: %s, eval rows: %s%s", label_map.num_labels,
                "multi-label" if label_map.multi_label else "single-label", data.num_train_rows or "streaming",
                rows(data.evaluation), f", model-selection rows ({data.validation_split}): {rows(data.validation)}"
                if data.validation is not None else "")
    if args.norm_stats == "compute" and args.norm_mean is None:
        stats = shared_normalization_stats(extractor, data.statistics_clips, accelerator)
        extractor.mean, extractor.std = stats["mean"], stats["std"]
        logger.info("Log-mel statistics of %d training clips: mean %.4f, std %.4f", stats["clips"], stats["mean"],
                    stats["std"])

    model = build_model(args, label_map)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    loss_kind = args.loss if args.loss != "auto" else ("bce" if label_map.multi_label else "ce")
    logger.info("Model %s: %.2fM parameters, loss %s", model.config.model_type,
                sum(p.numel() for p in model.parameters()) / 1e6, loss_kind)

    per_device = per_device_batch_size(args.batch_size, accelerator.num_processes, args.gradient_accumulation_steps)
    stream, train_loader = data.train_loader(per_device, accelerator)
    eval_loader = data.eval_loader(per_device, accelerator)
    validation_loader = data.eval_loader(per_device, accelerator, split="validation")
    model = accelerator.prepare(model)  # before the optimizer: its groups are built from the prepared parameters
    optimizer = build_optimizer(accelerator.unwrap_model(model), args, args.layer_decay, stem_layer_decay=args.layer_decay_stem == "decayed")
    if stream is None:
        optimizer, train_loader = accelerator.prepare(optimizer, train_loader)
        batches_per_epoch = len(train_loader)
    else:
        optimizer = accelerator.prepare(optimizer)
        rows = data.num_train_rows
        batches_per_epoch = math.ceil(rows / args.batch_size) * args.gradient_accumulation_steps if rows else None
    total_steps = total_training_steps(args, batches_per_epoch)
    warmup = args.warmup_steps if args.warmup_steps is not None else int(args.warmup_ratio * total_steps)
    warmup = min(warmup, total_steps)
    scheduler = cosine_schedule_with_warmup(optimizer, warmup, total_steps, args.min_lr_ratio)

    ema = WeightEMA(accelerator.unwrap_model(model), args.ema_decay) if args.ema_decay and args.ema_decay > 0 else None
    loop = TrainingLoop(accelerator, args, data, stream, train_loader, scheduler, total_steps, batches_per_epoch)
    loop.register(ema)
    selection = None
    if validation_loader is not None:  # AST / EAT on Speech Commands: select on validation, report the test metrics
        metric = args.selection_metric if args.selection_metric != "auto" else (
            "mAP" if label_map.multi_label else "accuracy")
        selection = ModelSelection(f"validation_{metric}")
        loop.register(selection)
    loop.resume(resolve_resume_path(args.resume, args.output_dir))
    device = accelerator.device
    masking = build_masking(args)
    mixup = build_mixup(args, label_map)
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "run_args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)
    accelerator.init_trackers("specpatch-finetune", config={k: str(v) for k, v in vars(args).items()})
    logger.info("Training %d steps: global batch %d (%d per process x %d processes x %d accumulation), warm-up %d",
                total_steps, args.batch_size, per_device, accelerator.num_processes,
                args.gradient_accumulation_steps, warmup)

    history = []
    eval_model = (lambda: ema.module) if ema is not None else (lambda: accelerator.unwrap_model(model))

    def evaluate_split(loader, prefix: str, tag) -> dict:
        # The unwrapped model: DDP's forward would broadcast buffers, a collective that processes with different
        # numbers of evaluation batches would not all join.
        metrics, _, _, skipped = evaluate(eval_model(), loader, extractor, accelerator, device)
        metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
        metrics[f"{prefix}_skipped_clips"] = skipped
        logger.info("%s: %s", tag if isinstance(tag, str) else f"epoch {tag}",
                    ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        model.train()
        return metrics

    def run_eval(tag) -> dict | None:
        """The model-selection split when there is one (the state is kept if it scores best), else the evaluation
        split."""
        if selection is not None:
            metrics = evaluate_split(validation_loader, "validation", tag)
            if selection.update(metrics, loop.global_step, eval_model()):
                logger.info("Best %s so far (%.4f) at step %d.", selection.metric, selection.best_value,
                            loop.global_step)
        elif eval_loader is not None:
            metrics = evaluate_split(eval_loader, "eval", tag)
        else:
            return None
        accelerator.log(metrics, step=loop.global_step)
        history.append({"step": loop.global_step, **metrics})
        return metrics

    running_loss, running_count = 0.0, 0
    model.train()
    for batch, generator in loop.micro_batches(on_epoch_end=None if args.eval_steps else run_eval):
        with accelerator.accumulate(model):
            waveforms, lengths, labels = batch["waveforms"], batch["lengths"], batch["labels"]
            if waveforms.shape[0] == 0:
                # Every clip of the micro-batch was corrupt: a zero loss through a real forward pass keeps the
                # processes in step (DDP's gradient all-reduce needs a forward and a backward on every process).
                silence = torch.zeros(1, extractor.max_length, extractor.num_mel_bins, device=device)
                loss = model(input_values=silence).logits.float().sum() * 0.0
            else:
                targets = labels
                if isinstance(mixup, WaveformMixup) and waveforms.shape[0] > 1:
                    waveforms, targets, _, partner = mixup(waveforms, labels, generator=generator, return_params=True)
                    lengths = torch.maximum(lengths, lengths[partner.to(lengths.device)])
                features, _ = extractor.extract_features(waveforms, lengths)
                if isinstance(mixup, SpectrogramMixup):  # EAT: mixup on the normalised spectrogram, then masking
                    features, targets = mixup(features, labels, generator=generator)
                if isinstance(masking, SpecMask):  # the features are this step's own: mask them in place
                    features = masking(features.contiguous(), generator=generator, inplace=True)
                elif masking is not None:
                    features = masking(features, generator=generator)
                logits = model(input_values=features).logits
                loss = loss_function(loss_kind, logits, targets, label_map.multi_label)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        running_loss += float(loss.detach())
        running_count += 1
        if not loop.step_done():
            continue
        if ema is not None:
            ema.update(accelerator.unwrap_model(model))
        if loop.should(args.logging_steps) or loop.global_step == total_steps:
            mean_loss = accelerator.gather(torch.tensor([running_loss / max(running_count, 1)],
                                                        device=device)).mean().item()
            lr = optimizer.param_groups[-1]["lr"]
            loop.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            accelerator.log({"train_loss": mean_loss, "lr": lr, "epoch": loop.epoch}, step=loop.global_step)
            running_loss, running_count = 0.0, 0
        if loop.should(args.eval_steps):
            run_eval(f"step {loop.global_step}")
        loop.maybe_checkpoint()

    # Final evaluation, saving, and one clip through the pipeline.
    final_metrics = run_eval("final") or {}
    if selection is not None:
        # The selected state replaces the final one (in the EMA copy when there is one): it is tested and saved.
        selection.restore(eval_model())
        logger.info("Selected the state of step %d (%s %.4f); testing it on %r.", selection.best_step,
                    selection.metric, selection.best_value, data.eval_split)
        final_metrics = {**selection.best_metrics, "selection_metric": selection.metric,
                         "selected_step": selection.best_step,
                         **evaluate_split(eval_loader, "eval", f"test, step {selection.best_step}")}
    summary = loop.finish()
    final_model = ema.module if ema is not None else None
    state_dict = None if ema is not None else accelerator.get_state_dict(model)
    accelerator.wait_for_everyone()
    results = {
        "recipe": args.recipe,
        "model_type": accelerator.unwrap_model(model).config.model_type,
        **summary,
        "distributed_type": str(accelerator.distributed_type),
        "ema": ema is not None,
        "runtime_s": round(time.time() - start_time, 1),
        **final_metrics,
        "history": history,
    }
    if accelerator.is_main_process:
        final_model = final_model if final_model is not None else accelerator.unwrap_model(model)
        final_model.config.problem_type = label_map.problem_type
        final_model.save_pretrained(args.output_dir, state_dict=state_dict, safe_serialization=True)
        extractor.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=1)
        logger.info("Saved the model and feature extractor to %s", args.output_dir)
        if not args.no_pipeline_demo and data.evaluation is not None:
            results["pipeline_demo"] = pipeline_demo(args, data)
        summary = ", ".join(f"{k} {results[k]:.4f}" for k in ("eval_mAP", "eval_accuracy") if k in results)
        if selection is not None:
            summary += f" (state of step {selection.best_step}, selected by {selection.metric})"
        print(f"\nDone in {time.time() - start_time:.0f} s: {summary or 'no evaluation split'}; model in {args.output_dir}")
    end_training(accelerator, model)
    return results


def pipeline_demo(args, data) -> dict | None:
    """Classifies the first decodable evaluation clip with `pipeline("audio-classification")` from the saved folder."""
    from transformers import pipeline

    rows = data.evaluation.select_columns(data.columns)
    rows = rows.take(8) if args.streaming else rows.select(range(min(8, len(rows))))
    for row in rows:
        audio = row[data.audio_column]
        try:
            clip, rate = load_audio(audio["bytes"] or audio["path"], sampling_rate=None)
        except Exception:  # corrupt: try the next one
            continue
        path = os.path.join(args.output_dir, "example.flac")
        import soundfile as sf

        sf.write(path, clip, rate)
        classifier = pipeline("audio-classification", model=args.output_dir)
        predictions = classifier(path, top_k=3)
        truth = [data.label_map.names[i] for i in data.label_map.encode(row[data.label_column])]
        print(f"\nPipeline on {path} (true labels: {', '.join(truth)}):")
        for p in predictions:
            print(f"  {p['label']:<24s} {p['score']:.3f}")
        return {"file": path, "true_labels": truth, "predictions": predictions}
    return None


if __name__ == "__main__":
    main()
