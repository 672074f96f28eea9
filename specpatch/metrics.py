# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Evaluation metrics of the papers: mAP for multi-label sets (AudioSet), accuracy for single-label ones.

- mAP, as AST, the FFTP paper and the AaPE paper report it on AudioSet: the macro average over classes of the average
  precision (area under the precision-recall curve, scikit-learn's step-wise `average_precision_score`), taken over the
  classes that have at least one positive in the evaluation set (a class without positives has no defined AP; the
  AudioSet evaluation set has positives for all 527 classes, small subsets may not).
- Accuracy: top-1 accuracy of single-label predictions (Speech Commands, ESC-50).

scikit-learn computes both; this module only chooses the classes, validates shapes and converts tensors.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    array = np.asarray(x)
    if array.dtype == object:
        raise ValueError(f"`{name}` must be a numeric array, got an object array.")
    return array


def mean_average_precision(scores, targets, return_per_class: bool = False):
    """
    Macro mAP over the classes with at least one positive target.

    Args:
        scores (array or tensor of shape `(num_examples, num_classes)`):
            Scores, logits or probabilities (any monotonic transform gives the same AP).
        targets (array or tensor of shape `(num_examples, num_classes)`):
            Multi-hot targets; values > 0.5 count as positive (so soft targets of mixup would also work).
        return_per_class (`bool`, *optional*, defaults to `False`):
            Also return the per-class AP, `nan` for classes without positives.

    Returns:
        `float` mAP (`nan` when no class has a positive), and the `(num_classes,)` per-class AP array if requested.
    """
    from sklearn.metrics import average_precision_score

    scores = _as_numpy(scores, "scores").astype(np.float64)
    targets = _as_numpy(targets, "targets")
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            "mean_average_precision expects scores and multi-hot targets of the same shape (num_examples, num_classes), "
            f"got {scores.shape} and {targets.shape}."
        )
    if not np.isfinite(scores).all():
        raise ValueError("mean_average_precision got non-finite scores.")
    positives = targets > 0.5
    has_positive = positives.any(axis=0)
    per_class = np.full(scores.shape[1], np.nan)
    if has_positive.any():
        per_class[has_positive] = average_precision_score(
            positives[:, has_positive], scores[:, has_positive], average=None
        )
    value = float(np.mean(per_class[has_positive])) if has_positive.any() else float("nan")
    return (value, per_class) if return_per_class else value


def accuracy(logits, labels) -> float:
    """
    Top-1 accuracy of single-label predictions.

    Args:
        logits (array or tensor of shape `(num_examples, num_classes)`): scores; the prediction is their argmax.
        labels (array or tensor): class indices `(num_examples,)`, or one-hot / soft targets `(num_examples,
            num_classes)` whose argmax is the class.

    Returns:
        `float` in [0, 1].
    """
    from sklearn.metrics import accuracy_score

    logits = _as_numpy(logits, "logits")
    labels = _as_numpy(labels, "labels")
    if logits.ndim != 2:
        raise ValueError(f"accuracy expects logits of shape (num_examples, num_classes), got {logits.shape}.")
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"accuracy expects {logits.shape[0]} class indices, got labels of shape {labels.shape}.")
    if logits.shape[0] == 0:
        raise ValueError("accuracy got no examples.")
    return float(accuracy_score(labels.astype(np.int64), logits.argmax(axis=1)))


def classification_metrics(logits, labels, multi_label: bool) -> dict[str, float]:
    """
    The metrics a run reports. Multi-label data: `{"mAP", "top1_hit_rate"}`, the latter being the share of examples
    whose top-scoring class is one of their positives (a sanity number, not an AudioSet metric). Single-label data:
    `{"accuracy", "mAP"}`, mAP over one-hot targets (for comparison across tasks).
    """
    logits = _as_numpy(logits, "logits")
    labels = _as_numpy(labels, "labels")
    if multi_label:
        hits = np.take_along_axis(labels > 0.5, logits.argmax(axis=1)[:, None], axis=1)[:, 0]
        return {"mAP": mean_average_precision(logits, labels), "top1_hit_rate": float(hits.mean())}
    one_hot = np.eye(logits.shape[1], dtype=np.float32)[labels.astype(np.int64)] if labels.ndim == 1 else labels
    return {"accuracy": accuracy(logits, labels), "mAP": mean_average_precision(logits, one_hot)}


__all__ = ["mean_average_precision", "accuracy", "classification_metrics"]
