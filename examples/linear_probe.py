#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""
Linear probing of a frozen encoder (the AaPE paper's protocol, Sec. IV-B and Table II).

    python examples/linear_probe.py --model_name_or_path <checkpoint> --dataset_name ashraq/esc50
    accelerate launch examples/linear_probe.py --model_name_or_path <checkpoint> --dataset_name <UrbanSound8K copy>

1. Features of every clip from the frozen encoder, computed once (sharded over the processes, gathered): the class
   token concatenated with the mean-pooled patch tokens. Models that define `get_probe_features(input_values)`
   (AaPE-ViT) provide exactly that. For the others the script uses `pooler_output` (FFTP-AST: the mean of the class
   and distillation tokens; FFTP-AuM: its class token) concatenated with the mean of `last_hidden_state` over all
   tokens (a couple of class tokens among hundreds of patch tokens barely move that mean).
   Padded frames never enter the features: each clip is encoded on its own frames only (clips of a batch with the
   same number of frames together), so neither attention nor the pooled mean sees padding, and a clip's features
   do not depend on how much it was padded or on what it was batched with (M2D / EVAR likewise embed each clip at its
   own length instead of a padded fixed length). Clips shorter than one patch are padded up to one patch.
2. Standardisation with the mean and standard deviation of the *training* features of each split or fold.
3. A linear classifier trained with Adam and a cosine schedule (no weight decay, no augmentation), cross-entropy for
   single-label sets (accuracy) and binary cross-entropy for multi-label ones (mAP). The AaPE paper trains with Adam
   + cosine; its peak learning rate was lost, so `--learning_rate` defaults to 1e-3 (inferred).
4. Cross-validation over the dataset's folds when it has a fold column (ESC-50: 5 folds, UrbanSound8K: 10): train on
   all other folds, test on each fold, report the mean; otherwise train on the train split, test on the test split.

Features are cached in `--output_dir` and finished folds recorded, so `--resume` skips what is done.
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
import time

import numpy as np
import torch
import torch.nn.functional as F

import specpatch  # noqa: F401  (registers the models)
from specpatch.data import (
    AudioCollator,
    DatasetSpec,
    IndexedDataset,
    detect_label_columns,
    infer_label_map,
    load_audio_dataset,
    pick_eval_split,
    select_split,
)
from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor
from specpatch.metrics import classification_metrics
from specpatch.training import cosine_schedule_with_warmup, end_training, make_accelerator

logger = logging.getLogger("specpatch.linear_probe")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", help="Pre-trained checkpoint (folder or hub id).")
    p.add_argument("--model_type", help="Random-initialised encoder of this type instead (a baseline / smoke test).")
    p.add_argument("--config_overrides", help="JSON dict of config fields for --model_type.")
    p.add_argument("--dataset_name", required=True)
    p.add_argument("--dataset_config_name")
    p.add_argument("--dataset_revision", help='Hub revision, e.g. "refs/convert/parquet" for a script dataset.')
    p.add_argument("--data_dir")
    p.add_argument("--cache_dir")
    p.add_argument("--train_split", default="train")
    p.add_argument("--eval_split")
    p.add_argument("--audio_column")
    p.add_argument("--label_column")
    p.add_argument("--label_names_column")
    p.add_argument("--fold_column", help="Cross-validate over this column (default: `fold` when present).")
    p.add_argument("--no_cross_validation", action="store_true", help="Use train / eval splits even with folds.")
    p.add_argument("--max_length", type=int, help="Input frames (default: the checkpoint's feature extractor).")
    p.add_argument("--frontend", choices=("kaldi", "logmel"))
    p.add_argument("--feature_batch_size", type=int, default=32, help="Clips per forward pass, per process.")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=8000, help="Classifier steps (AaPE Table II: 8K for US8K).")
    p.add_argument("--batch_size", type=int, default=128, help="Classifier batch (AaPE Table II: 128 for US8K).")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="Peak LR (inferred; lost in the paper).")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/linear_probe")
    p.add_argument("--resume", action="store_true", help="Reuse cached features and finished folds.")
    p.add_argument("--report_to", default="none")
    args = p.parse_args(argv)
    if not args.model_name_or_path and not args.model_type:
        p.error("pass --model_name_or_path (or --model_type for a random encoder)")
    return args


def load_encoder(args):
    """The bare encoder (`AutoModel`) of a checkpoint (a fine-tuned classifier's encoder loads too), and its feature
    extractor."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    if args.model_name_or_path:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a fine-tuned checkpoint's head is "unexpected" for the bare encoder: fine
        model = AutoModel.from_pretrained(args.model_name_or_path)
        hf_logging.set_verbosity(verbosity)
        try:
            extractor = AutoFeatureExtractor.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError):
            extractor = None
    else:
        overrides = json.loads(args.config_overrides) if args.config_overrides else {}
        model = AutoModel.from_config(AutoConfig.for_model(args.model_type, **overrides))
        extractor = None
    if extractor is None:
        frontend = args.frontend or ("logmel" if model.config.model_type == "aape_vit" else "kaldi")
        extractor = SpecPatchFeatureExtractor(frontend=frontend,
                                              max_length=args.max_length or getattr(model.config, "max_length", 1024))
    if args.max_length:
        extractor.max_length = args.max_length
    return model.eval().requires_grad_(False), extractor


def encoder_features(model, input_values: torch.Tensor) -> torch.Tensor:
    """Class token (pooled output) concatenated with mean-pooled tokens; see the module docstring."""
    if hasattr(model, "get_probe_features"):  # AaPE-ViT: exactly the paper's features
        return model.get_probe_features(input_values)
    out = model(input_values=input_values, return_dict=True)
    hidden = out.last_hidden_state
    pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else hidden[:, 0]
    return torch.cat([pooled, hidden.mean(dim=1)], dim=-1)


def min_frames(model) -> int:
    """Frames of one patch in time (the shortest input the model takes)."""
    patch = getattr(model.config, "patch_size", 16)
    return int(patch[-1] if isinstance(patch, (list, tuple)) else patch)


@torch.no_grad()
def clip_features(model, extractor, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Probe features of a batch of clips, each computed on its real frames only (no padding reaches the encoder):
    the batch is split into groups of clips with the same number of frames, each group cropped to that number."""
    features, frames = extractor.extract_features(waveforms, lengths)
    frames = frames.clamp(min=min_frames(model), max=features.shape[1]).tolist()
    out = [None] * len(frames)
    for count in sorted(set(frames)):
        rows = [i for i, n in enumerate(frames) if n == count]
        group = encoder_features(model, features[rows, :count])
        for row, value in zip(rows, group):
            out[row] = value
    return torch.stack(out)


@torch.no_grad()
def extract(dataset, columns, collator, model, extractor, accelerator, args, desc: str):
    """Features and labels of a whole split, computed in contiguous shards per process and gathered in order."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    rank, world, n = accelerator.process_index, accelerator.num_processes, len(dataset)
    start, stop = rank * n // world, (rank + 1) * n // world
    loader = torch.utils.data.DataLoader(IndexedDataset(dataset.select(range(start, stop)), columns),
                                         batch_size=args.feature_batch_size, collate_fn=collator,
                                         num_workers=args.num_workers)
    feats, labels, rows, skipped = [], [], [], 0
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process):
        skipped += batch["skipped_index"].numel()
        if batch["waveforms"].shape[0] == 0:
            continue
        with accelerator.autocast():
            feats.append(clip_features(model, extractor, batch["waveforms"].to(accelerator.device),
                                       batch["lengths"].to(accelerator.device)).float().cpu().numpy())
        labels.append(batch["labels"].numpy())
        rows.append(batch["index"].numpy() + start)
    parts = gather_object([(np.concatenate(feats) if feats else None, np.concatenate(labels) if labels else None,
                            np.concatenate(rows) if rows else None, skipped)])
    kept = [p for p in parts if p[0] is not None]
    return (np.concatenate([p[0] for p in kept]), np.concatenate([p[1] for p in kept]),
            np.concatenate([p[2] for p in kept]), sum(p[3] for p in parts))


def train_linear(train_x, train_y, test_x, test_y, num_labels, multi_label, args, device) -> dict:
    """Standardise with training statistics, fit a linear layer with Adam + cosine, return test metrics."""
    mean = train_x.mean(axis=0, keepdims=True)
    std = train_x.std(axis=0, keepdims=True) + 1e-6
    x = torch.tensor((train_x - mean) / std, dtype=torch.float32, device=device)
    t = torch.tensor((test_x - mean) / std, dtype=torch.float32, device=device)
    y = torch.tensor(train_y, device=device)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    torch.manual_seed(args.seed)
    classifier = torch.nn.Linear(x.shape[1], num_labels).to(device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=args.learning_rate, weight_decay=0.0)
    scheduler = cosine_schedule_with_warmup(optimizer, 0, args.steps)
    batch = min(args.batch_size, x.shape[0])
    for _ in range(args.steps):
        index = torch.randint(0, x.shape[0], (batch,), generator=generator).to(device)
        logits = classifier(x[index])
        target = y[index]
        loss = F.binary_cross_entropy_with_logits(logits, target.float()) if multi_label else \
            F.cross_entropy(logits, target.long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        logits = classifier(t).cpu().numpy()
    return classification_metrics(logits, test_y, multi_label)


def main(argv=None) -> dict:
    args = parse_args(argv)
    accelerator = make_accelerator(args)  # as the training scripts: processes, logging, seeds
    start_time = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    accelerator.init_trackers("specpatch-linear-probe", config={k: str(v) for k, v in vars(args).items()})

    model, extractor = load_encoder(args)
    model.to(accelerator.device)
    spec = DatasetSpec(args.dataset_name, args.dataset_config_name, args.data_dir, cache_dir=args.cache_dir,
                       revision=args.dataset_revision)
    with accelerator.main_process_first():
        dataset, audio_column = load_audio_dataset(spec, args.audio_column)
    train = select_split(dataset, args.train_split)
    # The label / names / fold columns and the label map by the rules finetune.py's data (specpatch.data.AudioData)
    # uses; single- or multi-label follows from the label column's type.
    found = detect_label_columns(train.features, args.label_column, args.label_names_column, args.fold_column,
                                 folds=not args.no_cross_validation)
    label_column, fold_column = found.label, found.fold
    label_map = infer_label_map(train, label_column, found.label_names)
    collator = AudioCollator.for_extractor(extractor, audio_column, label_column, label_map)
    columns = [audio_column, label_column]

    # 1. Features (cached).
    splits = {"train": train}
    if fold_column is None:
        eval_split = pick_eval_split(dataset.keys(), args.train_split, args.eval_split)
        if eval_split is None:
            raise ValueError("No fold column and no evaluation split: pass --eval_split or --fold_column.")
        splits["eval"] = dataset[eval_split]
    cache = {}
    for name, split in splits.items():
        path = os.path.join(args.output_dir, f"features_{name}.npz")
        if args.resume and os.path.isfile(path):
            loaded = np.load(path)
            cache[name] = (loaded["features"], loaded["labels"], loaded["rows"], int(loaded["skipped"]))
            logger.info("Loaded cached %s features %s", name, loaded["features"].shape)
            continue
        cache[name] = extract(split, columns, collator, model, extractor, accelerator, args, f"features {name}")
        if accelerator.is_main_process:
            feats, labels, rows, skipped = cache[name]
            np.savez(path + ".tmp.npz", features=feats, labels=labels, rows=rows, skipped=skipped)
            os.replace(path + ".tmp.npz", path)
        if cache[name][3]:
            logger.warning("Skipped %d corrupt or empty clips in %s.", cache[name][3], name)
    accelerator.wait_for_everyone()

    # 2-3. Classifier per fold or on train -> eval (main process; cheap).
    results_path = os.path.join(args.output_dir, "probe_results.json")
    results = {"folds": {}}
    if args.resume and os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
    if accelerator.is_main_process:
        feats, labels, rows, _ = cache["train"]
        if fold_column is not None:
            fold_of_row = np.asarray(train[fold_column])[rows]
            protocol = [(str(k), fold_of_row != k, fold_of_row == k) for k in sorted(set(fold_of_row.tolist()))]
        else:
            protocol = [("test", None, None)]
        for name, fit_mask, test_mask in protocol:
            if name in results["folds"]:
                logger.info("Fold %s already done: %s", name, results["folds"][name])
                continue
            if fit_mask is None:
                test_x, test_y = cache["eval"][0], cache["eval"][1]
                fit_x, fit_y = feats, labels
            else:
                fit_x, fit_y, test_x, test_y = feats[fit_mask], labels[fit_mask], feats[test_mask], labels[test_mask]
            metrics = train_linear(fit_x, fit_y, test_x, test_y, label_map.num_labels, label_map.multi_label, args,
                                   accelerator.device)
            results["folds"][name] = metrics
            logger.info("Fold %s: %s", name, metrics)
            with open(results_path + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(results_path + ".tmp", results_path)
        key = "mAP" if label_map.multi_label else "accuracy"
        values = [m[key] for m in results["folds"].values()]
        results.update({
            "metric": key,
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
            "feature_dim": int(feats.shape[1]),
            "num_clips": int(feats.shape[0] + (cache["eval"][0].shape[0] if "eval" in cache else 0)),
            "skipped_clips": int(sum(c[3] for c in cache.values())),
            "runtime_s": round(time.time() - start_time, 1),
        })
        accelerator.log({f"probe_{key}_mean": results["mean"]})
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nLinear probe {key}: {results['mean']:.4f} +- {results['std']:.4f} over {len(values)} "
              f"{'folds' if fold_column else 'split'}; results in {results_path}")
    end_training(accelerator)
    return results


if __name__ == "__main__":
    main()
