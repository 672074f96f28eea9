# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Training utilities shared by the example scripts (fine-tuning, pre-training, linear probing).

- [`cosine_schedule_with_warmup`]: linear warm-up then cosine annealing (both papers; AaPE Table I: minimum LR 0).
- [`layer_decay_parameter_groups`]: AdamW parameter groups with layer-wise learning-rate decay (BEiT, used by AaPE
  fine-tuning as in EAT / ATST) and the usual no-weight-decay rules, by parameter-name patterns that work for
  FFTP-AST, FFTP-AuM and AaPE-ViT.
- [`ModelSelection`]: keeps the best state by a validation metric (Speech Commands V2: AST / EAT select on the
  validation list and report the test accuracy of that state).
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
    stem_layer_decay: bool = True,
) -> list[dict[str, Any]]:
    """
    Optimizer parameter groups with layer-wise learning-rate decay (BEiT, Bao et al. 2021; AaPE Table I).

    The learning rate of a parameter at layer `l` (see [`layer_id_for_parameter`]) is
    `learning_rate * layer_decay ** (num_layers + 1 - l)`: the head gets the full rate, each block below it
    `layer_decay` times the one above, the embeddings the smallest. `layer_decay=None` or `1.0` gives plain AdamW groups.
    Groups carry `lr_scale` and `layer_id` for logging; frozen parameters are left out.

    `stem_layer_decay=False` keeps layer 0 (the input stem: patch embedding, AaPE's SBLU / Lambda encoder / fusion,
    position embeddings, class tokens) at the full learning rate, as EAT's fine-tuning code does: it scales only the
    Transformer blocks' parameters (`MaeImageClassificationModel`, data2vec-multi branch, cwx-worst-one/EAT
    `models/EAT_audio_classification.py`). BEiT's rule (`True`) gives the stem `layer_decay ** (num_layers + 1)`.

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
            scale = 1.0 if (layer_id == 0 and not stem_layer_decay) else decay ** (num_layers + 1 - layer_id)
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


class ModelSelection:
    """
    Model selection on a validation split, the Speech Commands V2 protocol as the papers' reference code runs it:
    evaluate on the validation split during training, keep the state that scores best, report that state's test
    metrics. AST: `src/traintest.py` saves `best_audio_model.pth` whenever the validation accuracy beats the best so far
    and `src/run.py` evaluates it on the Speech Commands test set; EAT (fairseq): `checkpoint.best_checkpoint_metric:
    accuracy` keeps `checkpoint_best.pt` by the validation subset's accuracy.

    After each validation evaluation `update(metrics, step, model)` keeps a CPU copy of `model.state_dict()` when
    `metrics[metric]` is strictly better than the best so far (the earliest of equal scores wins, as AST's
    `acc > best_acc`; a NaN score never wins). `restore(model)` loads the kept state. Checkpointed through
    `state_dict` / `load_state_dict` (`accelerator.register_for_checkpointing`), so a resumed run continues selecting.
    Cost: one copy of the weights in CPU memory per process, and in every checkpoint.

    Args:
        metric (`str`): key of the evaluation metrics to select by (`accuracy`, `mAP`, ...).
        greater_is_better (`bool`, defaults to `True`).
    """

    def __init__(self, metric: str, greater_is_better: bool = True):
        self.metric = metric
        self.greater_is_better = bool(greater_is_better)
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, Any] = {}
        self.best_state: dict[str, torch.Tensor] | None = None

    def is_better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.greater_is_better else value < self.best_value

    def update(self, metrics: dict[str, Any], step: int, model: nn.Module) -> bool:
        """Keeps `model`'s state when `metrics[self.metric]` is the best so far; returns whether it was."""
        if self.metric not in metrics:
            raise ValueError(f"Selection metric {self.metric!r} is not among the evaluation metrics {sorted(metrics)}.")
        value = float(metrics[self.metric])
        if not self.is_better(value):
            return False
        self.best_value, self.best_step, self.best_metrics = value, int(step), dict(metrics)
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def restore(self, model: nn.Module) -> None:
        """Loads the selected state into `model` (the model `update` was given, or one with the same keys)."""
        if self.best_state is None:
            raise RuntimeError("No state was selected: the validation split was never evaluated.")
        model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "best_metrics": json.dumps(self.best_metrics),
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["metric"] != self.metric or bool(state["greater_is_better"]) != self.greater_is_better:
            raise ValueError(f"The checkpoint selected by {state['metric']!r}; this run selects by {self.metric!r}.")
        self.best_value = None if state["best_value"] is None else float(state["best_value"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.best_metrics = json.loads(state["best_metrics"])
        self.best_state = state["best_state"]


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

    Reads `args.gradient_accumulation_steps` (1 when absent), `mixed_precision`, `report_to`, `output_dir` and `seed`;
    joins CPU-only
    processes with gloo (`cpu_multiprocess`), logs INFO to stdout on the local main process only, quiets accelerate's
    per-file checkpoint lines and the datasets / transformers chatter, and seeds every library.
    """
    import logging
    import sys

    import datasets
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    check_distributed_engine()  # before Accelerator(): FSDP on a CPU-only machine fails inside it
    accelerator = Accelerator(
        cpu=cpu_multiprocess(),
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", 1),
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


def end_training(accelerator, model: nn.Module | None = None) -> None:
    """Ends a run on every process: waits for all of them, frees DDP's reducer, then `accelerator.end_training()`.

    Why the reducer first: `accelerator.end_training()` destroys the process group, after which DDP's `Reducer`
    may hold the group's last reference. torch frees a `Reducer` with the GIL held; the gloo group's destructor then
    joins its worker threads, one of which may need the GIL to free a finished collective's tensors, and the process
    never exits (seen in about one 2-process CPU run in ten: main thread in `~ProcessGroupGloo` under
    `~Reducer`, a worker in `~AsyncBarrierWork` waiting for the GIL). Freed while the group is still registered,
    the reducer drops a reference that is not the last; torch releases the GIL when the group itself goes.
    """
    accelerator.wait_for_everyone()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        for name in ("logger", "reducer"):  # the logger holds the reducer too
            if name in model.__dict__:
                delattr(model, name)
    accelerator.end_training()


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



# ----------------------------------------------------------------------------------------------------------------
# Recipes and command-line arguments shared by the scripts
# ----------------------------------------------------------------------------------------------------------------


def parse_config_overrides(value) -> dict:
    """`--config_overrides` as a dict: a JSON object, or `key=value` pairs separated by commas whose values are read as
    JSON when they parse (numbers, booleans, lists such as `patch_size=[16,16]`) and as strings otherwise."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    text = str(value).strip()
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


RECIPE_SPLIT_KEYS = ("dataset_config_name", "train_split", "eval_split", "validation_split")
"""Recipe values that describe the recipe's own dataset (see [`apply_recipe`])."""


def apply_recipe(args, recipes: dict[str, dict], defaults: dict) -> dict:
    """
    Fills every argument a flag left unset (`None`) from the selected recipe (`args.recipe`), then from `defaults`.
    A recipe that names its dataset owns its `dataset_config_name` and splits ([`RECIPE_SPLIT_KEYS`]): they are dropped
    when `--dataset_name` names another one. A recipe without a dataset (Speech Commands V2: any folder converted by
    `specpatch.speech_commands`) keeps its split names for whatever `--dataset_name` gives. Returns the recipe used.
    """
    if args.recipe not in recipes:
        raise ValueError(f"Unknown recipe {args.recipe!r}; choose one of {sorted(recipes)}.")
    recipe = dict(recipes[args.recipe])
    own = recipe.get("dataset_name")
    if own is not None and getattr(args, "dataset_name", None) not in (None, own):
        for key in RECIPE_SPLIT_KEYS:
            recipe.pop(key, None)
    for key, fallback in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, recipe.get(key, fallback))
    return recipe


def add_optimization_arguments(parser):
    """Optimizer / schedule flags shared by the training scripts (an argument group; recipes fill unset values)."""
    g = parser.add_argument_group("optimisation")
    g.add_argument("--num_epochs", type=int, help="Epochs (map-style data); --max_train_steps wins.")
    g.add_argument("--max_train_steps", type=int, help="Optimizer steps.")
    g.add_argument("--batch_size", type=int, help="Global batch size (all processes, all accumulation steps).")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, help="Peak learning rate.")
    g.add_argument("--adam_beta1", type=float)
    g.add_argument("--adam_beta2", type=float)
    g.add_argument("--weight_decay", type=float)
    g.add_argument("--warmup_steps", type=int)
    g.add_argument("--min_lr_ratio", type=float, help="Final learning rate as a share of the peak (cosine).")
    g.add_argument("--max_grad_norm", type=float, help="Gradient clipping; 0 = off.")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), help="Default: accelerate's configuration.")
    g.add_argument("--seed", type=int, default=42)
    return g


def add_run_arguments(parser):
    """Output, checkpoint, resume and logging flags shared by the training scripts."""
    import argparse

    g = parser.add_argument_group("run")
    g.add_argument("--output_dir", help="Default: outputs/<recipe>...")
    g.add_argument("--overwrite_output_dir", action="store_true")
    g.add_argument("--checkpointing_steps", type=int, help="Save a checkpoint every N optimizer steps (0 = off).")
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume", nargs="?", const="latest",
                   help="Resume from a checkpoint folder, or (no value) from the latest one in --output_dir.")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--report_to", default="none", help='accelerate trackers: "all", "tensorboard", "wandb", ...')
    g.add_argument("--record_example_ids", action="store_true", help=argparse.SUPPRESS)  # tests: log rows seen
    return g


def prepare_output_dir(args, what: str = "trained model") -> None:
    """Refuses to overwrite a finished run (unless `--overwrite_output_dir` or `--resume`), then creates the folder."""
    if (os.path.isfile(os.path.join(args.output_dir, "config.json")) and not args.overwrite_output_dir
            and args.resume is None):
        raise ValueError(f"{args.output_dir} already holds a {what}; pass --overwrite_output_dir or --resume.")
    os.makedirs(args.output_dir, exist_ok=True)


UNSUPPORTED_ENGINES = {
    "FSDP": "ACCELERATE_USE_FSDP",
    "DeepSpeed": "ACCELERATE_USE_DEEPSPEED",
    "Megatron-LM": "ACCELERATE_USE_MEGATRON_LM",
}


def check_distributed_engine(accelerator=None) -> None:
    """
    The training scripts support one process and DDP (`accelerate launch --multi_gpu`, CPU processes joined with
    gloo); they refuse sharded engines with a clear error instead of running them half-right.

    FSDP in particular: the weight EMA of fine-tuning, the EMA teacher of pre-training (updated in place from the
    student after every step) and the checkpoint / digest code assume whole, unsharded parameters on every process,
    and accelerate (1.15, torch 2.13) cannot run its FSDP plugin on CPU to test otherwise: with `--fsdp_version 1`
    `Accelerator()` fails ("no available devices"), and with `--fsdp_version 2` on a CPU-only machine it silently
    falls back to plain multi-process data parallelism. Called before the `Accelerator` is built (environment set by
    `accelerate launch`) and after (its `distributed_type`).
    """
    requested = [name for name, variable in UNSUPPORTED_ENGINES.items()
                 if os.environ.get(variable, "false").strip().lower() in ("1", "true", "yes")]
    if accelerator is not None:
        from accelerate.utils import DistributedType

        supported = {DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU}
        for name in ("MULTI_XPU", "MULTI_MLU", "MULTI_NPU", "MULTI_MUSA", "MULTI_SDAA", "MULTI_HPU"):
            if hasattr(DistributedType, name):
                supported.add(getattr(DistributedType, name))
        if accelerator.distributed_type not in supported:
            requested.append(str(accelerator.distributed_type))
    if requested:
        raise ValueError(
            f"{', '.join(requested)} is not supported by the specpatch training scripts: they support one process and "
            "DDP (`accelerate launch --multi_gpu --num_processes N ...`, which also joins CPU processes with gloo). "
            "Sharded engines are refused because the weight EMA, the EMA teacher and the checkpoints assume whole "
            "parameters on every process (see specpatch.training.check_distributed_engine)."
        )


def build_optimizer(model: nn.Module, args, layer_decay: float | None = None, stem_layer_decay: bool = True):
    """AdamW over [`layer_decay_parameter_groups`] with the script's learning rate, betas and weight decay."""
    groups = layer_decay_parameter_groups(model, args.learning_rate, args.weight_decay, layer_decay,
                                          stem_layer_decay=stem_layer_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.weight_decay)


def total_training_steps(args, batches_per_epoch: int | None) -> int:
    """`--max_train_steps` when given, else `--num_epochs` epochs of `batches_per_epoch` micro-batches."""
    if args.max_train_steps:
        if int(args.max_train_steps) < 1:
            raise ValueError(f"--max_train_steps must be positive, got {args.max_train_steps}.")
        return int(args.max_train_steps)
    if args.num_epochs and batches_per_epoch:
        return int(args.num_epochs) * steps_per_epoch(batches_per_epoch, args.gradient_accumulation_steps)
    raise ValueError("Unknown dataset size (streaming) or no --num_epochs: pass --max_train_steps.")


def shared_normalization_stats(extractor, clips_fn, accelerator) -> dict:
    """Log-mel mean / std computed once on the main process from `clips_fn()` and broadcast, so every process
    normalises identically. Returns `{"mean", "std", "clips"}`."""
    from accelerate.utils import broadcast_object_list

    stats = [None]
    if accelerator.is_main_process:
        clips = clips_fn()
        if not clips:
            raise ValueError("No decodable training clip to compute the log-mel statistics on.")
        stats = [{**extractor.compute_normalization_stats(clips, extractor.sampling_rate), "clips": len(clips)}]
    broadcast_object_list(stats)
    return stats[0]


# ----------------------------------------------------------------------------------------------------------------
# The training loop's bookkeeping
# ----------------------------------------------------------------------------------------------------------------


class TrainingLoop:
    """
    The part of a training loop that does not depend on the model: epochs, per-process micro-batches, exact mid-epoch
    resume, optimizer-step bookkeeping, checkpoints, and corrupt-clip counts. `finetune.py` and `pretrain_aape.py`
    write only their forward pass, loss and logging:

        loop = TrainingLoop(accelerator, args, data, stream, loader, scheduler, total_steps, batches_per_epoch)
        loop.register(ema)                     # optional extra state saved with every checkpoint
        loop.resume(resolve_resume_path(args.resume, args.output_dir))
        for batch, generator in loop.micro_batches(on_epoch_end=...):
            with accelerator.accumulate(model):
                ...                            # forward, backward, clip, optimizer.step(), zero_grad()
            if loop.step_done():               # an optimizer step completed (scheduler stepped, counters moved)
                ...                            # EMA / teacher update, logging, evaluation
                loop.maybe_checkpoint()

    Data order: map-style loaders (prepared by accelerate, [`EpochSampler`]) skip the finished batches of the
    interrupted epoch with `accelerator.skip_first_batches`; streaming loaders rebuild the same loader and drop its
    first batches undecoded (`AudioData.resumed_stream_loader`). Streaming shards of unequal length put the processes
    at different points of their epochs, so checkpoints keep every process's own `(epoch, step_in_epoch)`.
    Corrupt-clip counts: accelerate saves registered objects from the main process only, so each checkpoint holds the
    totals over all processes and each process counts its new reads on top.
    Augmentations draw from `generator`, seeded by `(seed, process, micro-step)`: a resumed run draws the same ones.
    """

    def __init__(self, accelerator, args, data, stream, loader, scheduler, total_steps: int,
                 batches_per_epoch: int | None, desc: str = "train"):
        from tqdm.auto import tqdm

        self.accelerator = accelerator
        self.args = args
        self.data = data
        self.stream = stream
        self.loader = loader
        self.scheduler = scheduler
        self.total_steps = int(total_steps)
        self.batches_per_epoch = batches_per_epoch
        self.accumulation = int(args.gradient_accumulation_steps)
        self.state = TrainingState()
        self.state.extra = {"skip_events": 0, "skipped_rows": []}
        accelerator.register_for_checkpointing(scheduler, self.state)
        self.resumed_skip_events = 0
        self.local_skip_events = 0
        self.skipped_rows: set[int] = set()
        self.seen_rows: list[int] = []
        self.epoch = self.state.epoch
        self._stop = False
        self._finished_epoch = True
        self._desc = desc
        self._tqdm = tqdm
        self.progress = None

    def register(self, *objects) -> None:
        """Further objects (with `state_dict` / `load_state_dict`) saved with every checkpoint."""
        objects = [o for o in objects if o is not None]
        if objects:
            self.accelerator.register_for_checkpointing(*objects)

    def resume(self, path: str | None) -> None:
        """`accelerator.load_state(path)` (model, optimizer, scheduler, registered objects, RNG states) and this
        process's own loop position; nothing when `path` is None."""
        if path:
            self.accelerator.load_state(path)
            positions = self.state.extra.get("positions")
            if positions and len(positions) == self.accelerator.num_processes:
                self.state.epoch, self.state.step_in_epoch = (int(v) for v in positions[self.accelerator.process_index])
            logger.info("Resumed from %s at %s", path, self.state)
        self.resumed_skip_events = int(self.state.extra.get("skip_events", 0))
        self.skipped_rows = set(self.state.extra.get("skipped_rows", []))

    def _epoch_loader(self, epoch: int, skip: int):
        if self.stream is None:
            loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            loader.set_epoch(epoch)
            return loader
        self.stream.set_epoch(epoch)
        if skip:
            per_device = self.loader.batch_size
            return self.data.resumed_stream_loader(self.stream, per_device, skip)
        return self.loader

    def micro_batches(self, on_epoch_end=None):
        """Yields `(batch, generator)` per micro-batch until `total_steps` optimizer steps are done; calls
        `on_epoch_end(epoch)` after every complete epoch except one that ends the run."""
        state = self.state
        device = self.accelerator.device
        self.progress = self._tqdm(total=self.total_steps, initial=state.global_step, desc=self._desc,
                                   disable=not self.accelerator.is_local_main_process, dynamic_ncols=True)
        micro_step = state.global_step * self.accumulation
        while state.global_step < self.total_steps and not self._stop:
            self.epoch = epoch = state.epoch
            loader = self._epoch_loader(epoch, state.step_in_epoch * self.accumulation)
            self._finished_epoch = True
            for batch in loader:
                if self.stream is not None:  # not prepared by accelerate: move it here
                    batch = {k: v.to(device) for k, v in batch.items()}
                events = batch["skipped_index"].tolist()
                if events:
                    self.local_skip_events += len(events)
                    self.skipped_rows.update(events)
                if self.args.record_example_ids:
                    self.seen_rows.extend(batch["index"].tolist() + events)
                generator = step_generator(self.args.seed, self.accelerator.process_index, micro_step)
                micro_step += 1
                yield batch, generator
                if self._stop:
                    break
            if self._finished_epoch:
                state.epoch += 1
                state.step_in_epoch = 0
                if on_epoch_end is not None and state.global_step < self.total_steps:
                    on_epoch_end(epoch)
        self.progress.close()

    def step_done(self) -> bool:
        """After a micro-batch: whether it completed an optimizer step; if so the scheduler steps and the counters
        move (call it once per micro-batch, after `optimizer.step()`)."""
        if not self.accelerator.sync_gradients:
            return False
        self.scheduler.step()
        state = self.state
        state.global_step += 1
        state.step_in_epoch += 1
        if self.progress is not None:
            self.progress.update(1)
        if state.global_step >= self.total_steps:
            self._stop = True
            # The last step may also be the last of its epoch: then that epoch is complete.
            self._finished_epoch = bool(self.batches_per_epoch) and state.step_in_epoch >= steps_per_epoch(
                self.batches_per_epoch, self.accumulation)
        return True

    @property
    def global_step(self) -> int:
        return self.state.global_step

    def should(self, every: int | None) -> bool:
        """Whether the step just done is a multiple of `every` (or the last step when `every` is 0 / None: False)."""
        return bool(every) and self.state.global_step % int(every) == 0

    def total_skips(self) -> tuple[int, list[int]]:
        """Skipped clip reads and distinct skipped rows over all processes (collective: call on every process)."""
        from accelerate.utils import gather_object

        device = self.accelerator.device
        events = int(self.accelerator.reduce(torch.tensor([self.local_skip_events], device=device), "sum"))
        rows = sorted({r for part in gather_object([sorted(self.skipped_rows)]) for r in part})
        return self.resumed_skip_events + events, rows

    def maybe_checkpoint(self) -> str | None:
        """A checkpoint every `--checkpointing_steps` optimizer steps (collective: call on every process)."""
        if not self.should(self.args.checkpointing_steps):
            return None
        from accelerate.utils import gather_object

        state = self.state
        state.extra["skip_events"], state.extra["skipped_rows"] = self.total_skips()
        state.extra["positions"] = gather_object([(state.epoch, state.step_in_epoch)])
        path = save_checkpoint(self.accelerator, self.args.output_dir, state.global_step,
                               self.args.checkpoints_total_limit)
        logger.info("Checkpoint %s", path)
        return path

    def finish(self) -> dict:
        """End-of-run counts over all processes (collective); writes each process's seen rows when recording."""
        skip_events, rows = self.total_skips()
        if skip_events and self.accelerator.is_main_process:
            logger.warning("Skipped %d corrupt or empty training clip reads (%d distinct rows).", skip_events,
                           len([r for r in rows if r >= 0]) or skip_events)
        if self.args.record_example_ids:
            path = os.path.join(self.args.output_dir, f"seen_rows_rank{self.accelerator.process_index}.json")
            with open(path, "w") as f:
                json.dump(self.seen_rows, f)
        return {
            "global_step": self.state.global_step,
            "epochs_completed": self.state.epoch,
            "num_processes": self.accelerator.num_processes,
            "train_skipped_clip_reads": skip_events,
            "train_skipped_rows": [r for r in rows if r >= 0],
        }


__all__ = [
    "RECIPE_SPLIT_KEYS",
    "UNSUPPORTED_ENGINES",
    "ModelSelection",
    "TrainingLoop",
    "TrainingState",
    "add_optimization_arguments",
    "add_run_arguments",
    "apply_recipe",
    "build_optimizer",
    "check_distributed_engine",
    "parse_config_overrides",
    "prepare_output_dir",
    "shared_normalization_stats",
    "total_training_steps",
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
