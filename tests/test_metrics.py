# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""mAP and accuracy against hand-computed values and scikit-learn on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score

from specpatch.metrics import accuracy, classification_metrics, mean_average_precision


def test_map_hand_computed():
    # Class 0: positives ranked 1st and 3rd -> AP = (1/1 + 2/3) / 2 = 5/6.
    # Class 1: the single positive ranked 2nd -> AP = 1/2.
    # Class 2: no positive -> nan, excluded from the mean.
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.2], [0.3, 0.9, 0.1], [0.1, 0.2, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    value, per_class = mean_average_precision(scores, targets, return_per_class=True)
    assert per_class[0] == pytest.approx(5 / 6)
    assert per_class[1] == pytest.approx(0.5)
    assert math.isnan(per_class[2])
    assert value == pytest.approx((5 / 6 + 0.5) / 2)


def test_map_matches_sklearn_on_classes_with_positives():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((50, 7))
    targets = (rng.random((50, 7)) < 0.3).astype(np.float32)
    targets[:, 4] = 0  # a class without positives must be ignored, not counted as 0
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(7) if c != 4])
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
    # Tensors and soft (mixup) targets give the same value; a monotonic transform of the scores too.
    soft = torch.tensor(targets * 0.8 + 0.1)
    assert mean_average_precision(torch.sigmoid(torch.tensor(scores)), soft) == pytest.approx(expected, abs=1e-6)


def test_map_without_positives_is_nan_and_bad_shapes_raise():
    assert math.isnan(mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2))))
    with pytest.raises(ValueError, match="same shape"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        mean_average_precision(np.array([[np.nan, 0.0]]), np.array([[1, 0]]))


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 5))
    labels = rng.integers(0, 5, 40)
    expected = accuracy_score(labels, logits.argmax(1))
    assert accuracy(logits, labels) == pytest.approx(expected)
    assert accuracy(torch.tensor(logits), torch.tensor(np.eye(5)[labels])) == pytest.approx(expected)
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="class indices"):
        accuracy(logits, labels[:-1])


def test_classification_metrics_keys():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    single = classification_metrics(logits, np.array([0, 2]), multi_label=False)
    assert single["accuracy"] == pytest.approx(0.5)
    assert set(single) == {"accuracy", "mAP"}
    multi = classification_metrics(logits, np.array([[1, 0, 1], [0, 0, 1]]), multi_label=True)
    assert multi["top1_hit_rate"] == pytest.approx(0.5)
    assert multi["mAP"] == pytest.approx(mean_average_precision(logits, np.array([[1, 0, 1], [0, 0, 1]])))
