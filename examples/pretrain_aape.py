#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Self-supervised pre-training of AaPE-ViT (`AaPEViTForPreTraining`, aape.txt Sec. III-D / IV-B) with accelerate.

    python examples/pretrain_aape.py                                   # small model on the built-in dataset (offline)
    accelerate launch examples/pretrain_aape.py --recipe aape-as2m     # Table I on agkphysics/AudioSet (unbalanced)
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
import itertools
import json
import logging
import re
import time

import torch

import specpatch  # noqa: F401  (registers the models with the Auto classes)
from specpatch.configuration_aape_vit import AaPEViTConfig
from specpatch.data import (
    AudioCollator,
    DatasetSpec,
    EpochSampler,
    IndexedDataset,
    decode_clip,
    load_audio_dataset,
    max_samples_for_frames,
    shard_streaming_dataset,
)
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.modeling_aape_vit import AaPEViTForPreTraining
from specpatch.training import (
    TrainingState,
    cosine_schedule_with_warmup,
    layer_decay_parameter_groups,
    make_accelerator,
    per_device_batch_size,
    resolve_resume_path,
    save_checkpoint,
    step_generator,
    steps_per_epoch,
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
        "description": "AaPE Table I pre-training on AS-2M (agkphysics/AudioSet, unbalanced): 600K steps, 80K warm-up, "
        "batch 512 views (32 clips x 16 masks), AdamW wd 0.05, peak LR 5e-4 and betas (0.9, 0.95) (EAT, inferred), "
        "cosine to 0, clip norm 4 (EAT), 6 s crops (608 frames), no mixup, drop path 0.",
        "dataset_name": "agkphysics/AudioSet",
        "dataset_config_name": "unbalanced",
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
    "predictor_query_ratio",
    "contrastive_temperature",
    "contrastive_weight",
    "utterance_loss_weight",
    "regression_loss_scale",
    "teacher_instance_norm_axis",
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
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", help='Hub id, local folder, builder ("parquet", "audiofolder") or "builtin".')
    g.add_argument("--dataset_config_name")
    g.add_argument("--dataset_revision", help="Hub revision of the dataset.")
    g.add_argument("--data_dir")
    g.add_argument("--data_files", nargs="+")
    g.add_argument("--cache_dir", help="datasets cache folder.")
    g.add_argument("--builtin_sizes", help='Clips in the built-in train and test splits, e.g. "1200,300".')
    g.add_argument("--train_split", default="train")
    g.add_argument("--streaming", action="store_true", help="Stream the dataset instead of downloading it.")
    g.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Streaming shuffle buffer (rows).")
    g.add_argument("--audio_column")
    g.add_argument("--max_train_samples", type=int)
    g.add_argument("--sampling_rate", type=int, default=16000)
    g.add_argument("--max_length", type=int, help="Frames of the random crops (608: 6 s).")
    g.add_argument("--norm_mean", type=float, help="Log-mel mean (default: the checkpoint's, else computed).")
    g.add_argument("--norm_std", type=float, help="Log-mel standard deviation (default: as --norm_mean).")
    g.add_argument("--norm_clips", type=int, default=200, help="Training clips the statistics are computed on.")
    g.add_argument("--num_workers", type=int)
    g = p.add_argument_group("optimisation")
    g.add_argument("--max_train_steps", type=int, help="Optimizer steps (Table I: 600K).")
    g.add_argument("--num_epochs", type=int, help="Train for this many epochs instead (map-style datasets).")
    g.add_argument("--batch_size", type=int, help="Global batch (all processes and accumulation steps).")
    g.add_argument("--batch_unit", choices=("views", "clips"), help="What --batch_size counts (default: views).")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, help="Peak learning rate (lost in the paper; EAT's 5e-4).")
    g.add_argument("--adam_beta1", type=float)
    g.add_argument("--adam_beta2", type=float)
    g.add_argument("--weight_decay", type=float)
    g.add_argument("--warmup_steps", type=int)
    g.add_argument("--min_lr_ratio", type=float)
    g.add_argument("--max_grad_norm", type=float, help="Gradient clipping; 0 = off.")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), help="Default: accelerate's configuration.")
    g.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", help="Default: outputs/pretrain-<recipe>.")
    g.add_argument("--overwrite_output_dir", action="store_true")
    g.add_argument("--checkpointing_steps", type=int, help="Save a checkpoint every N optimizer steps (0 = off).")
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume", nargs="?", const="latest",
                   help="Resume from a checkpoint folder, or (no value) from the latest one in --output_dir.")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--report_to", default="none", help='accelerate trackers: "all", "tensorboard", "wandb", ...')
    g.add_argument("--record_example_ids", action="store_true", help=argparse.SUPPRESS)  # tests: log rows seen
    args = p.parse_args(argv)

    if args.recipe is None:
        args.recipe = "builtin" if args.dataset_name in (None, "builtin") else "aape-as2m"
    recipe = dict(RECIPES[args.recipe])
    if args.dataset_name is not None and args.dataset_name != recipe.get("dataset_name"):
        recipe.pop("dataset_config_name", None)  # the recipe's config name belongs to the recipe's dataset
    if args.model_name_or_path is not None:
        recipe.pop("config_overrides", None)  # the checkpoint defines the architecture
    for key, fallback in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, recipe.get(key, fallback))
    if args.output_dir is None:
        args.output_dir = os.path.join("outputs", f"pretrain-{args.recipe}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Model and features
# ----------------------------------------------------------------------------------------------------------------


def parse_config_overrides(value) -> dict:
    """`--config_overrides` as a dict: a JSON object, or `key=value` pairs separated by commas whose values are read as
    JSON when they parse (numbers, booleans, lists such as `patch_size=[16,16]`) and as strings otherwise."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config_overrides is not valid JSON: {err}") from err
        if not isinstance(parsed, dict):
            raise ValueError(f"--config_overrides must be a JSON object, got {text!r}.")
        return parsed
    overrides = {}
    # Split on commas that start a new `key=` (a list value such as [16,16] keeps its commas).
    for item in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise ValueError(f"--config_overrides expects JSON or key=value pairs, got {item!r} in {text!r}.")
        raw = raw.strip()
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


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


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names sorted, float32 bytes): equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


class UnlabeledAudio:
    """The training split's audio column (labels ignored): loading, worker-side decoding, loaders, clips for stats."""

    def __init__(self, args, accelerator, extractor: SpecPatchFeatureExtractor):
        self.args = args
        builtin_sizes = None
        if args.builtin_sizes:
            try:
                train_size, test_size = (int(v) for v in args.builtin_sizes.split(","))
            except ValueError as err:
                raise ValueError(f'--builtin_sizes expects two integers "train,test", got {args.builtin_sizes!r}.') \
                    from err
            builtin_sizes = {"train": train_size, "test": test_size}
        spec = DatasetSpec(args.dataset_name, args.dataset_config_name, args.data_dir, args.data_files,
                           args.streaming, args.cache_dir, args.dataset_revision, builtin_sizes=builtin_sizes)
        with accelerator.main_process_first():  # download / prepare once, then every process reads the cache
            dataset, self.audio_column = load_audio_dataset(spec, args.audio_column)
        if args.train_split not in dataset:
            raise ValueError(f"Training split {args.train_split!r} not found; splits: {list(dataset)}.")
        train = dataset[args.train_split].select_columns([self.audio_column])
        if args.max_train_samples:
            train = train.take(args.max_train_samples) if args.streaming else train.select(
                range(min(args.max_train_samples, len(train))))
        self.train = train
        # Whole clips come from the workers; the random crop happens on the training device (see `random_crop`).
        self.collator = AudioCollator(self.audio_column, sampling_rate=extractor.sampling_rate,
                                      min_samples=extractor.win_length)
        self.crop_samples = max_samples_for_frames(extractor.max_length, extractor)

    def loader(self, per_device: int, accelerator):
        """`(stream, loader)`: the sharded streaming dataset (None for map-style data) and this process's loader."""
        args = self.args
        if args.streaming:
            shard = shard_streaming_dataset(self.train, accelerator.process_index, accelerator.num_processes,
                                            args.seed, args.shuffle_buffer_size)
            return shard, torch.utils.data.DataLoader(
                shard, batch_size=per_device, collate_fn=self.collator,
                num_workers=min(args.num_workers, getattr(shard, "num_shards", 1)))
        sampler = EpochSampler(len(self.train), shuffle=True, seed=args.seed)
        loader = torch.utils.data.DataLoader(
            IndexedDataset(self.train), batch_size=per_device, sampler=sampler, collate_fn=self.collator,
            num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
            generator=torch.Generator().manual_seed(args.seed),  # keeps loader start-up off the global RNG
        )
        return None, loader

    def statistics_clips(self, count: int) -> list:
        """The first `count` decodable training clips, cut to the crop length (their first segment)."""
        rows = self.train.take(count) if self.args.streaming else self.train.select(range(min(count, len(self.train))))
        clips = []
        for row in rows:
            try:
                clip = decode_clip(row[self.audio_column], self.collator.sampling_rate)
            except Exception:  # corrupt clip: skipped here as everywhere
                continue
            if clip.shape[-1] >= self.collator.min_samples:
                clips.append(clip[: self.crop_samples])
        return clips


class SkipFirstBatches:
    """
    Collate function of the first epoch of a resumed streaming run: the first `num_batches` batches are read but not
    decoded (`None`), the rest are collated by `collate_fn`; the training loop drops the first `num_batches` batches.

    The loader is built exactly as in an uninterrupted run (same dataset, epoch, workers and batch size), so it yields
    the same batches in the same order: the run resumes mid-epoch on the same data. (`datasets.IterableDataset.skip`
    cannot do this: the dataset it returns drops the shuffling configuration and the epoch, so from the second epoch
    on, or with several shards, it skips rows of another order; and with several loader workers a per-worker skip
    shifts the round-robin order of the batches.) The `DataLoader` hands batch `i` to worker `i % workers` while no
    worker has run out of rows, so worker `w`'s `k`-th batch is batch `w + k * workers` or, once a worker ran out,
    an earlier one: a batch skipped here is always one of the first `num_batches`.
    """

    def __init__(self, collate_fn, num_batches: int):
        self.collate_fn = collate_fn
        self.num_batches = int(num_batches)
        self._calls = 0  # per process: each loader worker works on its own copy

    def __call__(self, rows):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        local, self._calls = self._calls, self._calls + 1
        if worker + local * workers < self.num_batches:
            return None
        return self.collate_fn(rows)


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

    from accelerate.utils import broadcast_object_list, gather_object
    from tqdm.auto import tqdm

    accelerator = make_accelerator(args)
    start_time = time.time()
    if (os.path.isfile(os.path.join(args.output_dir, "config.json")) and not args.overwrite_output_dir
            and args.resume is None):
        raise ValueError(f"{args.output_dir} already holds a pre-trained model; pass --overwrite_output_dir or "
                         "--resume.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be positive, got {args.max_train_steps}.")
    os.makedirs(args.output_dir, exist_ok=True)

    model = build_model(args)
    config = model.config
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    extractor, needs_stats = build_feature_extractor(args, config)
    data = UnlabeledAudio(args, accelerator, extractor)
    if needs_stats:
        # AaPE standardises with AudioSet's log-mel statistics, whose values were lost: compute them on the training
        # clips, once (main process), and share them so every process normalises identically.
        stats = [None]
        if accelerator.is_main_process:
            clips = data.statistics_clips(args.norm_clips)
            stats = [{**extractor.compute_normalization_stats(clips, extractor.sampling_rate), "clips": len(clips)}]
        broadcast_object_list(stats)
        extractor.mean = args.norm_mean if args.norm_mean is not None else float(stats[0]["mean"])
        extractor.std = args.norm_std if args.norm_std is not None else float(stats[0]["std"])
        logger.info("Log-mel statistics of %d training clips: mean %.4f, std %.4f", stats[0]["clips"], extractor.mean,
                    extractor.std)
    n_params = sum(p.numel() for p in model.aape_vit.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("AaPE-ViT pre-training: encoder %.2fM parameters, %.2fM trained (student, predictor, heads), "
                "%d views per clip, crops of %d frames", n_params / 1e6, n_train / 1e6, config.num_views,
                extractor.max_length)

    if args.batch_unit == "views":
        if args.batch_size % config.num_views:
            raise ValueError(f"--batch_size {args.batch_size} counts views: it must be a multiple of num_views "
                             f"({config.num_views}); or pass --batch_unit clips.")
        global_clips = args.batch_size // config.num_views
    else:
        global_clips = args.batch_size
    per_device = per_device_batch_size(global_clips, accelerator.num_processes, args.gradient_accumulation_steps)
    stream, train_loader = data.loader(per_device, accelerator)

    groups = layer_decay_parameter_groups(model, args.learning_rate, args.weight_decay, None)  # teacher: frozen, out
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.weight_decay)
    if stream is None:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        batches_per_epoch = len(train_loader)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
        batches_per_epoch = None
    if args.num_epochs:
        if batches_per_epoch is None:
            raise ValueError("--num_epochs needs a map-style dataset; pass --max_train_steps when streaming.")
        total_steps = args.num_epochs * steps_per_epoch(batches_per_epoch, args.gradient_accumulation_steps)
    else:
        total_steps = int(args.max_train_steps)
    warmup = min(args.warmup_steps, total_steps)
    scheduler = cosine_schedule_with_warmup(optimizer, warmup, total_steps, args.min_lr_ratio)

    state = TrainingState()
    state.extra = {"skip_events": 0, "skipped_rows": []}
    accelerator.register_for_checkpointing(scheduler, state)
    resume_path = resolve_resume_path(args.resume, args.output_dir)
    if resume_path:
        accelerator.load_state(resume_path)  # model (student and teacher), optimizer, scheduler, state, RNG states
        positions = state.extra.get("positions")
        if positions and len(positions) == accelerator.num_processes:
            # Streaming shards of unequal length put the processes at different points of their epochs; the
            # checkpoint (written by the main process) holds every process's own position.
            state.epoch, state.step_in_epoch = (int(v) for v in positions[accelerator.process_index])
        logger.info("Resumed from %s at %s", resume_path, state)
    device = accelerator.device
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "run_args.json"), "w") as f:
            json.dump(vars(args), f, indent=1, default=str)
    accelerator.init_trackers("specpatch-pretrain-aape", config={k: str(v) for k, v in vars(args).items()})

    logger.info("Pre-training %d steps: %d clips x %d views per step (%d clips per process x %d processes x %d "
                "accumulation), warm-up %d, peak LR %.2e", total_steps, global_clips, config.num_views, per_device,
                accelerator.num_processes, args.gradient_accumulation_steps, warmup, args.learning_rate)
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_local_main_process,
                    desc="pre-train", dynamic_ncols=True)
    seen_rows: list[int] = []
    # Corrupt-clip counts: accelerate saves registered objects from the main process only, so the checkpoint holds
    # the totals over all processes (`skip_events`, `skipped_rows`) and each process counts its new reads on top.
    resumed_skip_events = int(state.extra.get("skip_events", 0))
    skipped_rows = set(state.extra.get("skipped_rows", []))
    local_skip_events = 0

    def total_skips() -> tuple[int, list[int]]:
        """Skipped clip reads and distinct skipped rows over all processes (collective: call on every process)."""
        events = int(accelerator.reduce(torch.tensor([local_skip_events], device=device), "sum"))
        rows = sorted({r for part in gather_object([sorted(skipped_rows)]) for r in part})
        return resumed_skip_events + events, rows
    running = {k: 0.0 for k in LOSS_TERMS}
    running_count = 0
    momentum = float("nan")
    history = []
    contrastive_head = unwrapped.contrastive_head

    micro_step = state.global_step * args.gradient_accumulation_steps
    while state.global_step < total_steps:
        epoch = state.epoch
        skip = state.step_in_epoch * args.gradient_accumulation_steps
        if stream is None:
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            loader.set_epoch(epoch)
        else:
            stream.set_epoch(epoch)
            loader = train_loader
            if skip:
                resumed = torch.utils.data.DataLoader(stream, batch_size=per_device,
                                                      collate_fn=SkipFirstBatches(data.collator, skip),
                                                      num_workers=train_loader.num_workers)
                loader = itertools.islice(resumed, skip, None)
        model.train()
        finished_epoch = True
        for batch in loader:
            events = batch["skipped_index"].tolist()
            if events:
                local_skip_events += len(events)
                skipped_rows.update(events)
            if args.record_example_ids:
                seen_rows.extend(batch["index"].tolist() + events)
            # Crops and masks from a generator of (seed, process, step): a resumed run draws the same ones.
            generator = step_generator(args.seed, accelerator.process_index, micro_step)
            micro_step += 1
            with accelerator.accumulate(model):
                waveforms, lengths = batch["waveforms"].to(device), batch["lengths"].to(device)
                if waveforms.shape[0] == 0:
                    # Every clip of the micro-batch was corrupt: a zero loss through a real forward pass keeps the
                    # processes in step (DDP's gradient all-reduce needs a forward and a backward on every process).
                    features = torch.zeros(1, extractor.max_length, extractor.num_mel_bins, device=device)
                    scale = 0.0
                else:
                    waveforms, lengths = random_crop(waveforms, lengths, data.crop_samples, generator)
                    features, _ = extractor.extract_features(waveforms, lengths)
                    scale = 1.0
                output = model(input_values=features, generator=generator)
                loss = output.loss * scale
                if not output.contrastive_loss.requires_grad:
                    # Fewer than two clips here (or one view): the contrastive term is a constant 0 and its head gets
                    # no gradient, which DDP would wait for; a zero-weighted use keeps every parameter in the graph.
                    loss = loss + 0.0 * sum(p.sum() for p in contrastive_head.parameters())
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if scale:
                for name in LOSS_TERMS:
                    running[name] += float(getattr(output, name).detach())
                running_count += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            # The EMA teacher follows the student the optimizer step just updated (identical on every process), with
            # the momentum of this step: m(global_step) from 0.994 at step 0 towards 1.0 (DINOv2's cosine schedule).
            momentum = unwrapped.update_teacher(state.global_step, total_steps)
            state.global_step += 1
            state.step_in_epoch += 1
            progress.update(1)
            if state.global_step % args.logging_steps == 0 or state.global_step == total_steps:
                counts = torch.tensor([running_count, local_skip_events], device=device, dtype=torch.float64)
                sums = torch.tensor([running[k] for k in LOSS_TERMS], device=device, dtype=torch.float64)
                counts, sums = accelerator.reduce(counts, "sum"), accelerator.reduce(sums, "sum")
                logs = {k: float(s) / max(float(counts[0]), 1.0) for k, s in zip(LOSS_TERMS, sums.tolist())}
                logs.update({"lr": optimizer.param_groups[0]["lr"], "ema_momentum": momentum, "epoch": epoch,
                             "skipped_clips": resumed_skip_events + int(counts[1])})
                progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=state.global_step)
                history.append({"step": state.global_step, **logs})
                running, running_count = {k: 0.0 for k in LOSS_TERMS}, 0
            if args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0:
                state.extra["skip_events"], state.extra["skipped_rows"] = total_skips()
                state.extra["positions"] = gather_object([(state.epoch, state.step_in_epoch)])
                path = save_checkpoint(accelerator, args.output_dir, state.global_step, args.checkpoints_total_limit)
                logger.info("Checkpoint %s", path)
            if state.global_step >= total_steps:
                finished_epoch = False
                break
        if finished_epoch:
            state.epoch += 1
            state.step_in_epoch = 0
    progress.close()

    # Summary, checks and saving.
    skip_events, all_skipped = total_skips()
    if skip_events and accelerator.is_main_process:
        logger.warning("Skipped %d corrupt or empty clip reads (%d distinct rows).", skip_events,
                       len([r for r in all_skipped if r >= 0]) or skip_events)
    teacher_digests = gather_object([parameter_digest(unwrapped.teacher)])
    student_digests = gather_object([parameter_digest(unwrapped.aape_vit)])
    if len(set(teacher_digests)) != 1 and accelerator.is_main_process:
        logger.error("The EMA teachers differ across processes: %s", teacher_digests)
    if args.record_example_ids:
        with open(os.path.join(args.output_dir, f"seen_rows_rank{accelerator.process_index}.json"), "w") as f:
            json.dump(seen_rows, f)
    accelerator.wait_for_everyone()
    results = {
        "recipe": args.recipe,
        "global_step": state.global_step,
        "total_steps": total_steps,
        "epochs_completed": state.epoch,
        "num_processes": accelerator.num_processes,
        "clips_per_step": global_clips,
        "num_views": config.num_views,
        "final_ema_momentum": momentum,
        "train_skipped_clip_reads": skip_events,
        "train_skipped_rows": [r for r in all_skipped if r >= 0],
        "teacher_digests": teacher_digests,
        "student_digests": student_digests,
        "norm_mean": extractor.mean,
        "norm_std": extractor.std,
        "runtime_s": round(time.time() - start_time, 1),
        **({f"final_{k}": v for k, v in history[-1].items() if k in LOSS_TERMS} if history else {}),
        "history": history,
    }
    if accelerator.is_main_process:
        unwrapped.save_pretrained(args.output_dir, safe_serialization=True)
        extractor.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=1)
        last = history[-1] if history else {}
        print(f"\nDone in {time.time() - start_time:.0f} s: {state.global_step} steps, loss {last.get('loss', 0):.4f} "
              f"(masked {last.get('masked_loss', 0):.4f}, utterance {last.get('utterance_loss', 0):.4f}, "
              f"contrastive {last.get('contrastive_loss', 0):.4f}); model in {args.output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
