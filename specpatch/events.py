# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Sound events (label, onset, offset, score) from frame or window scores.

The post-processing of the DCASE sound event detection baselines (DESED / DCASE 2021 task 4 baseline): threshold the
scores per class, median-filter the binary decisions along time (`scipy.ndimage.median_filter` with a window of
`median_filter` rows, as the baseline's `median_window`), then turn every run of active rows into an event.

Each row stands for the stretch of time around its centre: from the midpoint with the previous row's centre to the
midpoint with the next one's (half a hop before the first and after the last row, clipped to `[0, duration]`). For
the pipeline's window scores, pass the window centres; for [`specpatch.inference.frame_scores`], the frame times it
returns.
"""

from __future__ import annotations

import numpy as np


def row_bounds(timestamps: np.ndarray, duration: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(starts, ends)` in seconds of the stretch of time each row stands for (see the module docstring)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.ndim != 1 or timestamps.size == 0:
        raise ValueError(f"`timestamps` must be a non-empty 1-D array of row centres, got shape {timestamps.shape}.")
    if timestamps.size > 1 and not np.all(np.diff(timestamps) > 0):
        raise ValueError("`timestamps` must be strictly increasing.")
    if timestamps.size == 1:
        half = np.array([timestamps[0] if duration is None else max(timestamps[0], duration - timestamps[0])])
        starts, ends = timestamps - half, timestamps + half
    else:
        mids = (timestamps[1:] + timestamps[:-1]) / 2
        starts = np.concatenate([[timestamps[0] - (mids[0] - timestamps[0])], mids])
        ends = np.concatenate([mids, [timestamps[-1] + (timestamps[-1] - mids[-1])]])
    starts = np.maximum(starts, 0.0)
    if duration is not None:
        ends = np.minimum(ends, duration)
    return starts, ends


def scores_to_events(
    scores,
    timestamps,
    labels: list[str] | dict[int, str] | None = None,
    threshold: float | np.ndarray = 0.5,
    median_filter: int = 1,
    min_duration: float = 0.0,
    duration: float | None = None,
) -> list[dict]:
    """
    Sound events from frame or window scores.

    Args:
        scores (`np.ndarray` or `torch.Tensor` of shape `(rows, num_labels)`):
            Scores in time order (probabilities for the default threshold).
        timestamps (`np.ndarray` of shape `(rows,)`):
            Centre time of each row in seconds, increasing (frame times, or window centres).
        labels (`list[str]` or `dict[int, str]`, *optional*):
            Label names (e.g. `model.config.id2label`); defaults to the class indices.
        threshold (`float` or `np.ndarray` of shape `(num_labels,)`, *optional*, defaults to 0.5):
            A row is active for a class when its score is at least this.
        median_filter (`int`, *optional*, defaults to 1):
            Length in rows of the median filter applied to the binary decisions (1: none). Odd values keep the filter
            centred.
        min_duration (`float`, *optional*, defaults to 0.0):
            Events shorter than this (seconds) are dropped.
        duration (`float`, *optional*):
            The recording's duration in seconds; the last row's stretch is clipped to it.

    Returns:
        `list[dict]` with `label`, `onset`, `offset` (seconds) and `score` (the highest score of the class inside the
        event, before filtering), sorted by onset then label.
    """
    from scipy.ndimage import median_filter as scipy_median_filter

    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().float().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be (rows, num_labels), got shape {scores.shape}.")
    if not np.all(np.isfinite(scores)):
        raise ValueError("`scores` contains NaN or infinite values.")
    starts, ends = row_bounds(timestamps, duration)
    if starts.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {starts.shape[0]} timestamps.")
    if int(median_filter) < 1:
        raise ValueError(f"`median_filter` must be a positive number of rows, got {median_filter}.")
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (scores.shape[1],))
    active = scores >= thresholds
    if median_filter > 1:
        active = scipy_median_filter(active.astype(np.uint8), size=(int(median_filter), 1), mode="nearest") > 0

    events = []
    for index in range(scores.shape[1]):
        column = np.concatenate([[False], active[:, index], [False]]).astype(np.int8)
        changes = np.diff(column)
        for first, stop in zip(np.flatnonzero(changes == 1), np.flatnonzero(changes == -1)):
            onset, offset = float(starts[first]), float(ends[stop - 1])
            if offset - onset < min_duration:
                continue
            name = labels[index] if labels is not None else index
            events.append({"label": name, "onset": onset, "offset": offset,
                           "score": float(scores[first:stop, index].max())})
    events.sort(key=lambda event: (event["onset"], str(event["label"])))
    return events


def window_centres(window_scores: list[dict]) -> np.ndarray:
    """Centre times of the windows returned by the pipeline with `return_window_scores=True`."""
    return np.array([(w["start"] + w["end"]) / 2 for w in window_scores])




def events_from_windows(windows: list[dict], **kwargs) -> list[dict]:
    """Events from the pipeline's per-window output (`return_window_scores=True`; call it with `top_k=None` so that
    every label's score is present, a label missing from a window counts as 0). `kwargs` go to
    [`scores_to_events`]; the window centres are the rows' timestamps and the last window's end the duration."""
    names = sorted({entry["label"] for window in windows for entry in window["labels"]})
    column = {name: i for i, name in enumerate(names)}
    scores = np.zeros((len(windows), len(names)))
    for row, window in enumerate(windows):
        for entry in window["labels"]:
            scores[row, column[entry["label"]]] = entry["score"]
    kwargs.setdefault("duration", max(w["end"] for w in windows))
    return scores_to_events(scores, window_centres(windows), labels=names, **kwargs)


__all__ = ["events_from_windows", "row_bounds", "scores_to_events", "window_centres"]
