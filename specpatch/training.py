# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Training utilities shared by the example scripts (fine-tuning, pre-training, linear probing).

- [`cosine_schedule_with_warmup`]: linear warm-up then cosine annealing (both papers; AaPE Table I: minimum LR 0).
- [`layer_decay_parameter_groups`]: AdamW parameter groups with layer-wise learning-rate decay (BEiT, used by AaPE
  fine-tuning as in EAT / ATST) and the usual no-weight-decay rules, by parameter-name patterns that work for
  FFTP-AST, FFTP-AuM and AaPE-ViT.
- [`WeightEMA`]: an exponential moving average of the model weights (AaPE fine-tuning, decay 0.995), built on
  `torch.optim.swa_utils.AveragedModel`.
- [`TrainingState`], [`save_checkpoint`], [`latest_checkpoint`]: periodic, atomic checkpoints on top of accelerate's
  `save_state` / `load_state` (model, optimizer, scheduler, every object registered for checkpointing, and each
  process's RNG states), with the loop position needed to resume mid-epoch.
- [`step_generator`]: a `torch.Generator` seeded from `(seed, process, step)` for the augmentations, so they are
  reproducible and a resumed run draws the same masks without saving generator states.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"

# Parameters that belong to the input stem (layer 0 of layer-wise decay): patch / position embeddings, special tokens,
# and AaPE's SBLU patch embedding (whose Lambda encoder has `layers.N` of its own that must not be read as encoder
# layers).
EMBEDDING_NAME_PATTERN = re.compile(
    r"(^|\.)(embeddings?|patch_embed\w*|pos_embed\w*|position_embeddings?|cls_token|distillation_token|mask_token|"
    r"class_token|sblu\w*)(\.|$)"
)
# Encoder blocks: `...layers.3.`, `...layer.3.`, `...blocks.3.` -> layer 4 (1-based, after the stem).
LAYER_NAME_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|blocks)\.(\d+)\.")
# Parameters never weight-decayed beyond 1-D ones: learned tokens and position embeddings (ViT / BEiT), and the state
# matrices / skips of Mamba mixers, forward and backward (`A_log`, `A_b_log`, `D`, `D_b`: Vim's `_no_weight_decay`).
NO_DECAY_NAME_PATTERN = re.compile(
    r"(cls_token|distillation_token|mask_token|class_token|position_embeddings?|pos_embed\w*|A\w*_log|(^|\.)D\w*)$"
)


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """
    Linear warm-up from 0 to each group's learning rate over `num_warmup_steps`, then cosine annealing to
    `min_lr_ratio` times it at `num_training_steps` (transformers' schedule; `min_lr_ratio=0` is AaPE's minimum LR 0).
    """
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    if num_training_steps < 1:
        raise ValueError(f"num_training_steps must be positive, got {num_training_steps}.")
    if not 0 <= num_warmup_steps <= num_training_steps:
        raise ValueError(f"num_warmup_steps must be in [0, {num_training_steps}], got {num_warmup_steps}.")
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps, num_training_steps, min_lr_rate=min_lr_ratio
    )


def num_encoder_layers(model: nn.Module) -> int:
    """Depth used by layer-wise decay: `config.num_hidden_layers`, else the largest block index found + 1."""
    config = getattr(model, "config", None)
    depth = getattr(config, "num_hidden_layers", None)
    if isinstance(depth, int) and depth > 0:
        return depth
    found = [int(m.group(1)) for name, _ in model.named_parameters() if (m := LAYER_NAME_PATTERN.search(name))]
    if not found:
        raise ValueError("Cannot tell the encoder depth: no config.num_hidden_layers and no `layers.N.` parameters.")
    return max(found) + 1


def layer_id_for_parameter(name: str, num_layers: int) -> int:
    """
    BEiT's layer index of a parameter: 0 for the input stem (embeddings, tokens, patch embedding), `i + 1` for
    encoder block `i`, `num_layers + 1` for everything after the encoder (final norm, classification head).
    """
    if EMBEDDING_NAME_PATTERN.search(name):
        return 0
    match = LAYER_NAME_PATTERN.search(name)
    if match:
        return min(int(match.group(1)) + 1, num_layers + 1)
    return num_layers + 1


def uses_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Weight decay applies to matrices and kernels, not to biases, norms, tokens, position embeddings or Mamba's
    `A_log` / `D` (ViT, BEiT and Vim conventions)."""
    if parameter.ndim <= 1 or name.endswith(".bias") or getattr(parameter, "_no_weight_decay", False):
        return False
    return not NO_DECAY_NAME_PATTERN.search(name)


def layer_decay_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float | None = None,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """
    Optimizer parameter groups with layer-wise learning-rate decay (BEiT, Bao et al. 2021; AaPE Table I).

    The learning rate of a parameter at layer `l` (see [`layer_id_for_parameter`]) is
    `learning_rate * layer_decay ** (num_layers + 1 - l)`: the head gets the full rate, each block below it
    `layer_decay` times the one above, the embeddings the smallest. `layer_decay=None` or `1.0` gives plain AdamW groups.
    Groups carry `lr_scale` and `layer_id` for logging; frozen parameters are left out.

    Returns:
        A list of dicts for `torch.optim.AdamW(groups, ...)`.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
    decay = 1.0 if layer_decay is None else float(layer_decay)
    num_layers = num_encoder_layers(model) if num_layers is None else num_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer_id = layer_id_for_parameter(name, num_layers) if decay != 1.0 else num_layers + 1
        with_decay = uses_weight_decay(name, parameter)
        key = (layer_id, with_decay)
        if key not in groups:
            scale = decay ** (num_layers + 1 - layer_id)
            groups[key] = {
                "params": [],
                "param_names": [],
                "weight_decay": weight_decay if with_decay else 0.0,
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(parameter)
        groups[key]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


class WeightEMA(nn.Module):
    """
    Exponential moving average of a model's weights, `ema <- decay * ema + (1 - decay) * weights` after every optimizer
    step (AaPE fine-tuning, decay 0.995; floating-point buffers such as BatchNorm statistics are averaged too).

    A thin wrapper over `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`: the first update copies the
    weights. As an `nn.Module` it has `state_dict` / `load_state_dict`, so `accelerator.register_for_checkpointing(ema)`
    saves and restores it. The averaged copy is `ema.module` (a full model: evaluate it or `save_pretrained` it).

    Args:
        model (`nn.Module`): the model to track (pass the unwrapped model, not a DDP wrapper).
        decay (`float`): EMA decay in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}.")
        self.decay = float(decay)
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def forward(self, *args, **kwargs):
        return self.averaged.module(*args, **kwargs)


def cpu_multiprocess() -> bool:
    """
    Whether `Accelerator(cpu=...)` must be set: several processes were launched (torchrun, `accelerate launch
    --multi_gpu --num_processes N`) on a machine without CUDA / XPU. accelerate then joins them with gloo; without
    `cpu=True` each process would train alone. (`accelerate launch --cpu --num_processes N` starts one process unless
    MPI is set up.)
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return world_size > 1 and not has_accelerator


def make_accelerator(args):
    """The `Accelerator` and logging set-up shared by the training scripts.

    Reads `args.gradient_accumulation_steps`, `mixed_precision`, `report_to`, `output_dir` and `seed`; joins CPU-only
    processes with gloo (`cpu_multiprocess`), logs INFO to stdout on the local main process only, quiets accelerate's
    per-file checkpoint lines and the datasets / transformers chatter, and seeds every library.
    """
    import logging
    import sys

    import datasets
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        cpu=cpu_multiprocess(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO,
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    if not accelerator.is_local_main_process:
        datasets.utils.logging.disable_progress_bar()
    set_seed(args.seed)
    return accelerator


def step_generator(seed: int, process_index: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator whose state depends only on `(seed, process_index, step)`: each process draws different
    augmentations, identically in an uninterrupted and a resumed run."""
    state = int(np.random.SeedSequence([int(seed), int(process_index), int(step)]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state % (2**63))


class TrainingState:
    """
    The loop position saved with every checkpoint (registered with `accelerator.register_for_checkpointing`):
    `global_step` (optimizer steps done), `epoch` and `step_in_epoch` (optimizer steps done in that epoch), plus any
    JSON-serialisable counters in `extra`.
    """

    def __init__(self):
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.extra: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "extra": json.dumps(self.extra),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.extra = json.loads(state.get("extra", "{}"))

    def __repr__(self) -> str:
        return f"TrainingState(global_step={self.global_step}, epoch={self.epoch}, step_in_epoch={self.step_in_epoch})"


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> str:
    return os.path.join(os.fspath(output_dir), "checkpoints", f"{CHECKPOINT_PREFIX}{step:08d}")


def list_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first (unfinished `.tmp` ones are ignored)."""
    root = os.path.join(os.fspath(output_dir), "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The most recent complete checkpoint under `output_dir`, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> str:
    """
    Writes `accelerator.save_state` to `output_dir/checkpoints/step_XXXXXXXX` atomically: every process writes into a
    `.tmp` folder, and once all are done the main process renames it, so a run killed while saving leaves the previous
    checkpoint as the latest complete one. Keeps the newest `total_limit` checkpoints. Call it on every process.
    """
    final = checkpoint_dir(output_dir, step)
    temporary = final + ".tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume_path(resume: str | None, output_dir: str | os.PathLike) -> str | None:
    """`--resume` semantics: `None` -> no resume; `"latest"` -> newest checkpoint in `output_dir` (None if there is
    none, so a first run with `--resume` simply starts); anything else must be a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    if not os.path.isdir(resume):
        raise ValueError(f"--resume {resume!r}: no such checkpoint folder.")
    return resume


def per_device_batch_size(global_batch_size: int, num_processes: int, gradient_accumulation_steps: int) -> int:
    """The per-process micro-batch so that `micro * processes * accumulation == global_batch_size` (the papers' batch
    size is the global one); raises a ValueError when it does not divide."""
    denominator = num_processes * gradient_accumulation_steps
    if global_batch_size < denominator or global_batch_size % denominator:
        raise ValueError(
            f"The batch size {global_batch_size} must be a multiple of processes ({num_processes}) x gradient "
            f"accumulation steps ({gradient_accumulation_steps})."
        )
    return global_batch_size // denominator


def steps_per_epoch(batches_per_epoch: int, gradient_accumulation_steps: int) -> int:
    return max(1, math.ceil(batches_per_epoch / gradient_accumulation_steps))


__all__ = [
    "TrainingState",
    "WeightEMA",
    "cosine_schedule_with_warmup",
    "cpu_multiprocess",
    "make_accelerator",
    "latest_checkpoint",
    "layer_decay_parameter_groups",
    "layer_id_for_parameter",
    "list_checkpoints",
    "num_encoder_layers",
    "per_device_batch_size",
    "resolve_resume_path",
    "save_checkpoint",
    "step_generator",
    "steps_per_epoch",
    "uses_weight_decay",
]
