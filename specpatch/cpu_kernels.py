# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""The per-sample loops of SpecMask (FFTP paper, Algorithm 1), compiled with numba when it is installed.

Algorithm 1 is sequential per spectrogram (each mask is tested against the masks already placed), draws a few
scalars per mask and places a handful of masks per sample, so its cost is loop overhead, not arithmetic: the
fastest CPU form is the plain loop compiled to machine code. The functions below are that loop, written once:

* `place_masks` runs Algorithm 1 for every sample of a batch on *rectangles* (the placed masks never overlap, so a
  sample's mask map is its list of rectangles; the overlap test of a candidate position is an interval test against
  them, never a scan of cells);
* `paint_boxes` writes the placed rectangles into a `(batch, frames, mel)` array, one slice per rectangle;
* `mask_spectrograms` does SpecMask's whole fill for float32 / float64 batches on the CPU in one pass per sample
  (copy if asked, the sample's mean, its rectangles), so each sample is read from memory once and painted while it is
  in cache.

With numba (a dependency of specpatch) they are compiled on first use (`cache=True`: once per machine, then loaded
from the package's `__pycache__`); without it the very same Python functions run, slower but with identical
results: every random number comes from one `numpy.random.Generator` in a fixed order (numba's `Generator.random`
is numpy's own bit stream), so the masks do not depend on whether numba is installed.
"""

from __future__ import annotations

import numpy as np

try:  # numba is optional at import time: the uncompiled functions give the same results, only slower
    import numba
except Exception:  # pragma: no cover - exercised only where numba is missing or broken
    numba = None


def _compiled(function=None, **options):
    """`function` compiled by numba (no Python objects, cached on disk, releases the GIL), or itself without numba."""
    if function is None:
        return lambda f: _compiled(f, **options)
    if numba is None:
        return function
    return numba.njit(cache=True, nogil=True, **options)(function)


def _overlaps_placed_py(boxes, sample, count, t0, f0, width, height):
    """Whether the box `[t0, t0 + width) x [f0, f0 + height)` intersects any of the first `count` boxes of `sample`
    (rows `(frame_start, mel_start, width, height)` of `boxes`): two half-open intervals intersect iff each one
    starts before the other ends, and two boxes iff both their frame and mel intervals do."""
    for k in range(count):
        b_t0, b_f0 = boxes[sample, k, 0], boxes[sample, k, 1]
        if t0 < b_t0 + boxes[sample, k, 2] and b_t0 < t0 + width:
            if f0 < b_f0 + boxes[sample, k, 3] and b_f0 < f0 + height:
                return True
    return False


overlaps_placed = _compiled(_overlaps_placed_py)


def _place_masks_py(
    rng, num_frames, num_mel, budget, max_height, max_width, full_frequency_prob, max_tries, max_draws,
    boxes, full_frequency, count, area, draws,
):  # fmt: skip
    """Algorithm 1 for each of the `boxes.shape[0]` samples in turn, with the random numbers of `rng` (a
    `numpy.random.Generator`), in this order per drawn mask: type, width, height, then (frame, mel) position per try.

    Outputs (preallocated, filled in place): `boxes` `(batch, capacity, 4)` int64 rows `(frame_start, mel_start,
    width, height)` of the placed masks in placement order; `full_frequency` `(batch, capacity)` bool; `count`,
    `area`, `draws` `(batch,)` int64: masks placed, cells masked, masks drawn (placed or dropped). `capacity` must be
    at least `min(max_draws, budget)`: a sample places at most one mask per draw and stops once its area (at least
    one cell per mask) reaches the budget.
    """
    for sample in range(boxes.shape[0]):
        placed = 0
        masked = 0
        drawn = 0
        while masked < budget and drawn < max_draws:  # lines 8-20
            drawn += 1
            # lines 9-14: type and size (a full-frequency mask spans all mel bins; its height draw is unused)
            is_full = rng.random() < full_frequency_prob
            width = int(rng.random() * max_width) + 1
            u_height = rng.random()
            height = num_mel if is_full else int(u_height * max_height) + 1
            # lines 15-16: up to max_tries positions, uniform where the mask fits; the first free one is kept
            for _ in range(max_tries):
                t0 = int(rng.random() * (num_frames - width + 1))
                f0 = int(rng.random() * (num_mel - height + 1))
                if not overlaps_placed(boxes, sample, placed, t0, f0, width, height):
                    boxes[sample, placed, 0] = t0
                    boxes[sample, placed, 1] = f0
                    boxes[sample, placed, 2] = width
                    boxes[sample, placed, 3] = height
                    full_frequency[sample, placed] = is_full
                    placed += 1
                    masked += width * height  # lines 17-19
                    break
            # no free position in max_tries: the mask is dropped and the next one is drawn
        count[sample] = placed
        area[sample] = masked
        draws[sample] = drawn


place_masks = _compiled(_place_masks_py)


def _paint_boxes_py(target, values, boxes, count):
    """`target[b, t0:t0 + w, f0:f0 + h] = values[b]` for the first `count[b]` boxes `(t0, f0, w, h)` of every sample
    `b`, in place (`target` `(batch, frames, mel)`, `values` `(batch,)` of target's dtype)."""
    for sample in range(target.shape[0]):
        value = values[sample]
        for k in range(count[sample]):
            t0, f0 = boxes[sample, k, 0], boxes[sample, k, 1]
            target[sample, t0 : t0 + boxes[sample, k, 2], f0 : f0 + boxes[sample, k, 3]] = value


paint_boxes = _compiled(_paint_boxes_py)

def _mask_spectrograms_py(source, target, values, copy, use_mean, boxes, count):
    """SpecMask's fill for float32 / float64 spectrograms on the CPU, one sample at a time while it is in cache:
    with `copy`, `target[b] = source[b]` (else `target` is `source`, masked in place); with `use_mean`,
    `values[b]` = the mean of `source[b]` (accumulated in float64), computed in the same pass as the copy; then the
    sample's boxes are painted with `values[b]`. `source`, `target`: C-contiguous `(batch, frames, mel)` of one dtype;
    `values`: `(batch,)` of that dtype (read when `use_mean` is false)."""
    batch = source.shape[0]
    size = source.shape[1] * source.shape[2]
    flat_source = source.reshape(batch, size)
    flat_target = target.reshape(batch, size)
    for sample in range(batch):
        row = flat_source[sample]
        total = 0.0
        if copy:
            out = flat_target[sample]
            for i in range(size):
                value = row[i]
                out[i] = value
                total += value
        elif use_mean:
            for i in range(size):
                total += row[i]
        if use_mean:
            values[sample] = total / size
        fill = values[sample]
        for k in range(count[sample]):
            t0, f0 = boxes[sample, k, 0], boxes[sample, k, 1]
            target[sample, t0 : t0 + boxes[sample, k, 2], f0 : f0 + boxes[sample, k, 3]] = fill


# reassociation lets the compiler vectorise the sum (float64 accumulation keeps it accurate)
mask_spectrograms = _compiled(_mask_spectrograms_py, fastmath={"reassoc"})

PYTHON_FUNCTIONS = {
    "overlaps_placed": _overlaps_placed_py,
    "place_masks": _place_masks_py,
    "paint_boxes": _paint_boxes_py,
    "mask_spectrograms": _mask_spectrograms_py,
}
"""The uncompiled functions (what runs without numba), for tests that compare them with the compiled ones."""


def is_compiled() -> bool:
    """Whether the kernels run compiled (numba importable)."""
    return numba is not None


def empty_outputs(batch: int, capacity: int):
    """Output arrays for `place_masks`: boxes, full_frequency, count, area, draws."""
    return (
        np.empty((batch, max(1, capacity), 4), np.int64),
        np.zeros((batch, max(1, capacity)), np.bool_),
        np.zeros(batch, np.int64),
        np.zeros(batch, np.int64),
        np.zeros(batch, np.int64),
    )


__all__ = ["empty_outputs", "is_compiled", "mask_spectrograms", "overlaps_placed", "paint_boxes", "place_masks"]
