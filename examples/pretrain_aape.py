#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Self-supervised pre-training of AaPE-ViT (`AaPEViTForPreTraining`, aape.txt Sec. III-D / IV-B) with accelerate.

    python examples/pretrain_aape.py                                   # small model on the built-in dataset (offline)
    accelerate launch examples/pretrain_aape.py --recipe aape-as2m     # Table I on AS-2M (config full, bal+unbal)
    accelerate launch examples/pretrain_aape.py --dataset_name agkphysics/AudioSet --dataset_config_name full \
        --streaming --batch_size 512 --learning_rate 5e-4
    accelerate launch examples/pretrain_aape.py --recipe aape-as2m --model_name_or_path <checkpoint>  # continue
    accelerate launch examples/pretrain_aape.py --recipe aape-as2m --resume                           # after a kill
    python examples/pretrain_aape.py --list_recipes

Labels are ignored: only the audio column is read. Every clip is decoded and resampled to 16 kHz on the DataLoader
workers (a corrupt or empty clip is skipped and counted, never fatal); on the training device a random 6 s segment is
cut from each clip (`--max_length` 608 log-mel frames; shorter clips are zero-padded in the log-mel domain, as AST /
EAT pad), the batched log-mel front end (`SpecPatchFeatureExtractor(frontend="logmel")`) standardises it, and the model
draws `num_views` inverse block masks per clip, runs the teacher once per clip and the student on every view. After
each optimizer step the EMA teacher follows the student with DINOv2's cosine momentum (0.994 -> 1.0), computed from
the global step on every process from the student weights that the optimizer step has just made identical everywhere
(DDP averages the gradients before the step), so the teachers stay identical across processes without communication;
the end of the run checks it (`teacher_digests` in `all_results.json`).

Recipe (`--recipe aape-as2m`, Table I): AdamW, weight decay 0.05, cosine schedule with linear warm-up to a minimum LR
of 0, 600K steps, 80K warm-up, batch 512, no mixup, drop path 0. Values the text lost are EAT's (the recipe AaPE
follows, Sec. III-D): peak LR 5e-4, Adam betas (0.9, 0.95), gradient clipping at norm 4. The batch of 512 is read as
512 *views* (32 clips x 16 masks): 600K steps x 32 clips is 19.2M clips, exactly EAT's budget (400K steps x 48 clips,
about 10 epochs of AS-2M), whereas 512 clips per step would be 150 epochs. `--batch_unit clips` switches the reading.
`--batch_size` is global: each process gets `clips / (processes x gradient_accumulation_steps)` clips per micro-batch.

Runs unchanged on CPU, one GPU or many (`accelerate launch --multi_gpu --num_processes N`; several processes on a
CPU-only machine are joined with gloo). Checkpoints (`accelerator.save_state`: model with its teacher, optimizer,
scheduler, loop position, each process's RNG states) are written every `--checkpointing_steps` optimizer steps;
`--resume` continues from the latest one, mid-epoch, on the same data order and with the same crops and masks (both
drawn from generators seeded by `(seed, process, step)`). The output directory is a `save_pretrained` folder of the
whole pre-training model (so pre-training can continue from it) plus the log-mel feature extractor config;
`AaPEViTForAudioClassification.from_pretrained(output_dir)` loads its student encoder with a new head.
"""

from __future__ import annotations

import os

# OpenMP threads that sleep instead of spinning while they wait: the DataLoader workers share the cores with the
# training threads (see finetune.py for the measurement). Must be set before torch is imported; an explicit setting
# wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import logging
import time

import torch

import specpatch  # noqa: F401  (registers the models with the Auto classes)
from specpatch.configuration_aape_vit import AaPEViTConfig
from specpatch.data import AudioData, add_data_arguments
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.modeling_aape_vit import AaPEViTForPreTraining
from specpatch.training import (  # noqa: F401  (parse_config_overrides: part of this script's interface)
    TrainingLoop,
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
    steps_per_epoch,
    total_training_steps,
)

logger = logging.getLogger("specpatch.pretrain_aape")

# Small AaPE-ViT of the built-in job (0.42M encoder parameters, 2 s clips, 8 x 12 tokens, 4 views): about 0.5-1 s a
# step on 2 CPU cores.
_SMALL = {
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "sblu_hidden_channels": 8,
    "sblu_kernel_size": 31,
    "sblu_output_dim": 48,
    "sblu_highpass_taps": 31,
    "lambda_hidden_size": 32,
    "lambda_num_layers": 1,
    "lambda_num_attention_heads": 2,
    "lambda_intermediate_size": 64,
    "predictor_hidden_size": 64,
    "predictor_num_layers": 2,
    "predictor_num_attention_heads": 4,
    "predictor_intermediate_size": 128,
    "contrastive_projection_dim": 32,
    "num_views": 4,
    "mask_block_size_range": [2, 3],
}

# Named recipes; every key is an argument and every flag overrides it. "inferred" marks values the AaPE text lost.
RECIPES: dict[str, dict] = {
    "aape-as2m": {
        "description": "AaPE Table I pre-training on AS-2M (agkphysics/AudioSet config full, bal_train + unbal_train "
        "joined): 600K steps, 80K warm-up, "
        "batch 512 views (32 clips x 16 masks), AdamW wd 0.05, peak LR 5e-4 and betas (0.9, 0.95) (EAT, inferred), "
        "cosine to 0, clip norm 4 (EAT), 6 s crops (608 frames), no mixup, drop path 0.",
        "dataset_name": "agkphysics/AudioSet",
        "dataset_config_name": "full",
        "train_split": "bal_train+unbal_train",
        "max_length": 608,
        "max_train_steps": 600_000,
        "warmup_steps": 80_000,
        "batch_size": 512,
        "batch_unit": "views",
        "learning_rate": 5e-4,  # inferred (EAT)
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,  # inferred (EAT)
        "weight_decay": 0.05,
        "min_lr_ratio": 0.0,
        "max_grad_norm": 4.0,  # inferred (EAT's clip_norm)
        "checkpointing_steps": 10_000,  # EAT's save_interval_updates
        "num_workers": 8,
    },
    "builtin": {
        "description": "Offline demo: a small AaPE-ViT (0.42M encoder parameters) pre-trained for 300 steps on the "
        "built-in synthetic dataset (2 s clips, 200 frames, 16 clips x 4 views per step), minutes on CPU.",
        "dataset_name": "builtin",
        "config_overrides": _SMALL,
        "max_length": 200,
        "max_train_steps": 300,
        "warmup_steps": 30,
        "batch_size": 64,  # 16 clips x 4 views
        "batch_unit": "views",
        "learning_rate": 1e-3,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "weight_decay": 0.05,
        "min_lr_ratio": 0.0,
        "max_grad_norm": 4.0,
        "checkpointing_steps": 100,
        "num_workers": 1,
    },
}

# Fallbacks for values neither a flag nor the recipe sets.
DEFAULTS: dict = {
    "dataset_name": None,
    "dataset_config_name": None,
    "train_split": "train",
    "config_overrides": None,
    "max_length": 608,
    "max_train_steps": 600_000,
    "num_epochs": None,
    "warmup_steps": 80_000,
    "batch_size": 512,
    "batch_unit": "views",
    "learning_rate": 5e-4,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "weight_decay": 0.05,
    "min_lr_ratio": 0.0,
    "max_grad_norm": 4.0,
    "checkpointing_steps": 1000,
    "num_workers": 2,
}

# Config fields that may change when pre-training continues from a checkpoint (the rest is the architecture).
TRAINING_CONFIG_FIELDS = (
    "mask_ratio",
    "num_views",
    "mask_block_size_range",
    "mask_block_placement",
    "mask_prob_adjust",
    "predictor_query_ratio",
    "contrastive_temperature",
    "contrastive_weight",
    "utterance_loss_weight",
    "regression_loss_scale",
    "teacher_instance_norm_axis",
    "teacher_target_layer_output",
    "teacher_average_top_k_layers",
    "utterance_loss_reduction",
    "utterance_target_instance_norm_axis",
    "contrastive_negatives",
    "masked_sblu_input",
    "ema_momentum_start",
    "ema_momentum_end",
    "drop_path_rate",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="Named settings; flags override them. Default: builtin without --dataset_name, else aape-as2m.")
    p.add_argument("--list_recipes", action="store_true", help="Print the recipes and exit.")
    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", help="AaPE-ViT checkpoint (pre-training, encoder or classifier; folder or "
                   "hub id) to continue from; a checkpoint without a teacher starts its teacher as a copy.")
    g.add_argument("--config_overrides", help='Config fields: JSON (\'{"hidden_size": 192}\') or key=value pairs '
                   '("hidden_size=192,num_hidden_layers=6"). With --model_name_or_path only training fields apply.')
    g.add_argument("--num_views", type=int, help="Masks (views) per clip (config field; 16 by default).")
    g.add_argument("--mask_ratio", type=float, help="Masked share of the tokens of each view (0.8).")
    g.add_argument("--contrastive_weight", type=float, help="Weight lambda of the contrastive loss (0.1).")
    g.add_argument("--ema_momentum_start", type=float, help="Teacher EMA momentum at step 0 (0.994).")
    g.add_argument("--ema_momentum_end", type=float, help="Teacher EMA momentum at the last step (1.0).")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g = add_data_arguments(p, labeled=False)
    g.add_argument("--norm_clips", type=int, default=200, help="Training clips the statistics are computed on.")
    g = add_optimization_arguments(p)
    g.add_argument("--batch_unit", choices=("views", "clips"), help="What --batch_size counts (default: views).")
    add_run_arguments(p)
    args = p.parse_args(argv)

    if args.recipe is None:
        args.recipe = "builtin" if args.dataset_name in (None, "builtin") else "aape-as2m"
    recipes = RECIPES
    if args.model_name_or_path is not None:  # the checkpoint defines the architecture
        recipes = {**RECIPES, args.recipe: {k: v for k, v in RECIPES[args.recipe].items() if k != "config_overrides"}}
    apply_recipe(args, recipes, DEFAULTS)
    if args.output_dir is None:
        args.output_dir = os.path.join("outputs", f"pretrain-{args.recipe}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Model and features
# ----------------------------------------------------------------------------------------------------------------


def wanted_config_fields(args) -> dict:
    """Config fields from `--config_overrides` and the dedicated flags (flags win)."""
    wanted = parse_config_overrides(args.config_overrides)
    for name in ("num_views", "mask_ratio", "contrastive_weight", "ema_momentum_start", "ema_momentum_end"):
        if getattr(args, name) is not None:
            wanted[name] = getattr(args, name)
    return wanted


def build_model(args) -> AaPEViTForPreTraining:
    """A new `AaPEViTForPreTraining` (config defaults = the paper's ViT-B, `max_length` = the crop), or one continued
    from `--model_name_or_path` with only its training fields overridable."""
    wanted = wanted_config_fields(args)
    unknown = sorted(k for k in wanted if not hasattr(AaPEViTConfig(), k))
    if unknown:
        raise ValueError(f"--config_overrides: {unknown} are not AaPEViTConfig fields.")
    if args.model_name_or_path:
        config = AaPEViTConfig.from_pretrained(args.model_name_or_path)
        if getattr(config, "model_type", None) != "aape_vit":
            raise ValueError(f"{args.model_name_or_path} is not an AaPE-ViT checkpoint (model_type "
                             f"{getattr(config, 'model_type', None)!r}).")
        def same(a, b) -> bool:
            return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b

        architecture = sorted(k for k in wanted if k not in TRAINING_CONFIG_FIELDS and not same(wanted[k],
                                                                                                 getattr(config, k)))
        if architecture:
            raise ValueError(f"{architecture} would change the architecture of {args.model_name_or_path}; only "
                             f"{list(TRAINING_CONFIG_FIELDS)} can be overridden when continuing from a checkpoint.")
        config.update(wanted)
        return AaPEViTForPreTraining.from_pretrained(args.model_name_or_path, config=config)
    wanted.setdefault("max_length", args.max_length)
    return AaPEViTForPreTraining(AaPEViTConfig(**wanted))


def build_feature_extractor(args, config: AaPEViTConfig) -> tuple[SpecPatchFeatureExtractor, bool]:
    """The log-mel front end (AaPE, Sec. IV-B) cropping `--max_length` frames; the checkpoint's statistics when
    continuing from one. Returns the extractor and whether its mean / std are still to be computed."""
    stats = None
    if args.model_name_or_path:
        try:
            from transformers import AutoFeatureExtractor

            previous = AutoFeatureExtractor.from_pretrained(args.model_name_or_path)
            if getattr(previous, "frontend", None) == "logmel":
                stats = (previous.mean, previous.std)
        except (OSError, ValueError):
            stats = None
    mean = args.norm_mean if args.norm_mean is not None else (stats[0] if stats else None)
    std = args.norm_std if args.norm_std is not None else (stats[1] if stats else None)
    extractor = SpecPatchFeatureExtractor(
        sampling_rate=args.sampling_rate, num_mel_bins=config.num_mel_bins, max_length=args.max_length,
        frontend="logmel", mean=mean, std=std,
    )
    return extractor, mean is None or std is None


def random_crop(
    waveforms: torch.Tensor, lengths: torch.Tensor, num_samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    A random `num_samples` segment of every clip (AaPE Sec. IV-B: random 6 s crops of the 10 s AS-2M clips), start
    drawn uniformly from `generator` (CPU) over the clip's own length; clips that are not longer are kept whole (the
    front end pads their log-mel). Returns `(batch, min(num_samples, width))` waveforms, zero after each clip's end,
    and the new lengths.
    """
    batch, width = waveforms.shape
    lengths_cpu = lengths.detach().cpu().long()
    room = (lengths_cpu - num_samples).clamp(min=0)
    offsets = (torch.rand(batch, generator=generator, dtype=torch.float64) * (room + 1).double()).floor().long()
    new_lengths = lengths_cpu.clamp(max=num_samples)
    out_width = min(num_samples, width)
    if not bool((offsets > 0).any()) and out_width == width:
        return waveforms, new_lengths.to(lengths.device)
    positions = torch.arange(out_width).unsqueeze(0)
    index = (offsets.unsqueeze(1) + positions).clamp(max=width - 1).to(waveforms.device)
    crops = waveforms.gather(1, index)
    keep = (positions < new_lengths.unsqueeze(1)).to(waveforms.device)
    return crops * keep, new_lengths.to(lengths.device)


def parameter_digest(module: torch.nn.Module, full_state_dict: dict | None = None, prefix: str = "") -> str:
    """SHA-256 of a module's state dict (names sorted, float32 bytes): equal digests mean bit-identical weights. With
    `full_state_dict` (the whole model's, `accelerator.get_state_dict`) the entries under `prefix` are used."""
    tensors = {k[len(prefix):]: v for k, v in (full_state_dict or {}).items() if k.startswith(prefix)}
    if not tensors:
        tensors = module.state_dict()
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


LOSS_TERMS = ("loss", "masked_loss", "utterance_loss", "contrastive_loss")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.list_recipes:
        for name, recipe in sorted(RECIPES.items()):
            print(f"{name}: {recipe['description']}")
        return {}
    from accelerate.utils import gather_object

    # Recipe -> accelerator, model, data, optimisation -> loop -> checks and saving.
    accelerator = make_accelerator(args)
    check_distributed_engine(accelerator)
    start_time = time.time()
    prepare_output_dir(args, "pre-trained model")
    model = build_model(args)
    config = model.config
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    extractor, needs_stats = build_feature_extractor(args, config)
    data = AudioData(args, accelerator, extractor, labeled=False)
    if needs_stats:
        # AaPE standardises with AudioSet's log-mel statistics, whose values were lost: computed on the training clips.
        stats = shared_normalization_stats(extractor, lambda: data.statistics_clips(args.norm_clips), accelerator)
        extractor.mean = args.norm_mean if args.norm_mean is not None else float(stats["mean"])
        extractor.std = args.norm_std if args.norm_std is not None else float(stats["std"])
        logger.info("Log-mel statistics of %d training clips: mean %.4f, std %.4f", stats["clips"], extractor.mean,
                    extractor.std)
    logger.info("AaPE-ViT pre-training: encoder %.2fM parameters, %.2fM trained (student, predictor, heads), "
                "%d views per clip, crops of %d frames", sum(p.numel() for p in model.aape_vit.parameters()) / 1e6,
                sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, config.num_views,
                extractor.max_length)

    if args.batch_unit == "views":
        if args.batch_size % config.num_views:
            raise ValueError(f"--batch_size {args.batch_size} counts views: it must be a multiple of num_views "
                             f"({config.num_views}); or pass --batch_unit clips.")
        global_clips = args.batch_size // config.num_views
    else:
        global_clips = args.batch_size
    per_device = per_device_batch_size(global_clips, accelerator.num_processes, args.gradient_accumulation_steps)
    stream, train_loader = data.train_loader(per_device, accelerator)
    model = accelerator.prepare(model)  # before the optimizer: its groups are built from the prepared parameters
    optimizer = build_optimizer(accelerator.unwrap_model(model), args)  # the frozen teacher is left out
    if stream is None:
        optimizer, train_loader = accelerator.prepare(optimizer, train_loader)
        batches_per_epoch = len(train_loader)
    else:
        optimizer = accelerator.prepare(optimizer)
        batches_per_epoch = None
    if args.num_epochs:  # --num_epochs wins here (the recipes always set --max_train_steps)
        if batches_per_epoch is None:
            raise ValueError("--num_epochs needs a map-style dataset; pass --max_train_steps when streaming.")
        total_steps = args.num_epochs * steps_per_epoch(batches_per_epoch, args.gradient_accumulation_steps)
    else:
        total_steps = total_training_steps(args, batches_per_epoch)
    warmup = min(args.warmup_steps, total_steps)
    scheduler = cosine_schedule_with_warmup(optimizer, warmup, total_steps, args.min_lr_ratio)

    loop = TrainingLoop(accelerator, args, data, stream, train_loader, scheduler, total_steps, batches_per_epoch,
                        desc="pre-train")
    loop.resume(resolve_resume_path(args.resume, args.output_dir))  # student and teacher, optimizer, scheduler, RNG
    device = accelerator.device
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "run_args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)
    accelerator.init_trackers("specpatch-pretrain-aape", config={k: str(v) for k, v in vars(args).items()})
    logger.info("Pre-training %d steps: %d clips x %d views per step (%d clips per process x %d processes x %d "
                "accumulation), warm-up %d, peak LR %.2e", total_steps, global_clips, config.num_views, per_device,
                accelerator.num_processes, args.gradient_accumulation_steps, warmup, args.learning_rate)

    running = {k: 0.0 for k in LOSS_TERMS}
    running_count = 0
    momentum = float("nan")
    history = []
    model.train()
    for batch, generator in loop.micro_batches():
        with accelerator.accumulate(model):
            waveforms, lengths = batch["waveforms"], batch["lengths"]
            if waveforms.shape[0] == 0:
                # Every clip of the micro-batch was corrupt: a zero loss through a real forward pass keeps the
                # processes in step (DDP's gradient all-reduce needs a forward and a backward on every process).
                features = torch.zeros(1, extractor.max_length, extractor.num_mel_bins, device=device)
                scale = 0.0
            else:
                # Crops (and the model's masks) from the (seed, process, step) generator: a resumed run draws the same.
                waveforms, lengths = random_crop(waveforms, lengths, data.crop_samples, generator)
                features, _ = extractor.extract_features(waveforms, lengths)
                scale = 1.0
            output = model(input_values=features, generator=generator)
            loss = output.loss * scale
            if not output.contrastive_loss.requires_grad:
                # Fewer than two clips here (or one view): the contrastive term is a constant 0 and its head gets
                # no gradient, which DDP would wait for; a zero-weighted use keeps every parameter in the graph.
                loss = loss + 0.0 * sum(p.sum() for p in unwrapped.contrastive_head.parameters())
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if scale:
            for name in LOSS_TERMS:
                running[name] += float(getattr(output, name).detach())
            running_count += 1
        if not loop.step_done():
            continue
        # The EMA teacher follows the student the optimizer step just updated (identical on every process), with
        # the momentum of this step: m(step) from 0.994 at step 0 towards 1.0 (DINOv2's cosine schedule).
        momentum = unwrapped.update_teacher(loop.global_step - 1, total_steps)
        if loop.should(args.logging_steps) or loop.global_step == total_steps:
            counts = torch.tensor([running_count, loop.local_skip_events], device=device, dtype=torch.float64)
            sums = torch.tensor([running[k] for k in LOSS_TERMS], device=device, dtype=torch.float64)
            counts, sums = accelerator.reduce(counts, "sum"), accelerator.reduce(sums, "sum")
            logs = {k: float(v) / max(float(counts[0]), 1.0) for k, v in zip(LOSS_TERMS, sums.tolist())}
            logs.update({"lr": optimizer.param_groups[0]["lr"], "ema_momentum": momentum, "epoch": loop.epoch,
                         "skipped_clips": loop.resumed_skip_events + int(counts[1])})
            loop.progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
            accelerator.log(logs, step=loop.global_step)
            history.append({"step": loop.global_step, **logs})
            running, running_count = {k: 0.0 for k in LOSS_TERMS}, 0
        loop.maybe_checkpoint()

    # Summary, checks and saving.
    summary = loop.finish()
    state_dict = accelerator.get_state_dict(model)  # the whole model's weights
    teacher_digests = gather_object([parameter_digest(unwrapped.teacher, state_dict, "teacher.")])
    student_digests = gather_object([parameter_digest(unwrapped.aape_vit, state_dict, "aape_vit.")])
    if len(set(teacher_digests)) != 1 and accelerator.is_main_process:
        logger.error("The EMA teachers differ across processes: %s", teacher_digests)
    accelerator.wait_for_everyone()
    results = {
        "recipe": args.recipe,
        **summary,
        "total_steps": total_steps,
        "clips_per_step": global_clips,
        "num_views": config.num_views,
        "distributed_type": str(accelerator.distributed_type),
        "final_ema_momentum": momentum,
        "teacher_digests": teacher_digests,
        "student_digests": student_digests,
        "norm_mean": extractor.mean,
        "norm_std": extractor.std,
        "runtime_s": round(time.time() - start_time, 1),
        **({f"final_{k}": v for k, v in history[-1].items() if k in LOSS_TERMS} if history else {}),
        "history": history,
    }
    if accelerator.is_main_process:
        unwrapped.save_pretrained(args.output_dir, state_dict=state_dict, safe_serialization=True)
        extractor.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=1)
        last = history[-1] if history else {}
        print(f"\nDone in {time.time() - start_time:.0f} s: {loop.global_step} steps, loss {last.get('loss', 0):.4f} "
              f"(masked {last.get('masked_loss', 0):.4f}, utterance {last.get('utterance_loss', 0):.4f}, "
              f"contrastive {last.get('contrastive_loss', 0):.4f}); model in {args.output_dir}")
    end_training(accelerator, model)
    return results


if __name__ == "__main__":
    main()
