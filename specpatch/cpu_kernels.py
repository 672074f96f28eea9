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

import math

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




# ----------------------------------------------------------------------------------------------------------------------
# Selective scan (Mamba's S6 recurrence), the per-chunk work of `selective_scan.py`'s CPU path
# ----------------------------------------------------------------------------------------------------------------------


def _parallel(function):
    """Compiled with numba's parallel loops (`prange` over the batch), cached; the plain function without numba."""
    if numba is None:
        return function
    return numba.njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})(function)


_prange = numba.prange if numba is not None else range


def _scan_chunk_forward_py(delta, A2, delta_u, B, C, carry, decay, states, y, t0, steps, save, compute_y):
    """Steps `t0 .. t0 + steps - 1` of the recurrence `h_t = a_t h_{t-1} + (delta_t u_t) B_t` with
    `a_t = exp(delta_t A) = exp2(delta_t A log2(e))`, and the readout `y_t = sum_n C_t[n] h_t[n]`.

    `delta`, `delta_u`, `y` `(batch, length, dim)` and `B`, `C` `(batch, length, n)` are indexed by `t`; `A2`
    `(n, dim)` is `A log2(e)`; `carry` `(batch, n, dim)`: the state before `t0` on entry, the last state on return.
    With `compute_y`, the span's rows of `y` are written; with `save`, the decays and states go to `decay` and `states`
    `(batch, >= steps, n, dim)` (row `t - t0`; placeholders otherwise). Parallel over the batch, vectorised over
    channels; nothing of size `(batch, length, n, dim)` is ever built."""
    batch, num_states, dim = carry.shape
    for b in _prange(batch):
        for step in range(steps):
            t = t0 + step
            x, dt = delta_u[b, t], delta[b, t]
            out = y[b, t] if compute_y else y[0, 0]  # `y` may be a placeholder when unused
            if compute_y:
                for d in range(dim):
                    out[d] = 0
            for n in range(num_states):
                b_n, c_n = B[b, t, n], C[b, t, n]
                h, A2_n = carry[b, n], A2[n]
                if save:
                    a_out, h_out = decay[b, step, n], states[b, step, n]
                    for d in range(dim):
                        a = math.exp2(dt[d] * A2_n[d])
                        value = a * h[d] + x[d] * b_n
                        h[d] = value
                        a_out[d] = a
                        h_out[d] = value
                elif compute_y:
                    for d in range(dim):
                        value = math.exp2(dt[d] * A2_n[d]) * h[d] + x[d] * b_n
                        h[d] = value
                        out[d] += c_n * value
                else:
                    for d in range(dim):
                        h[d] = math.exp2(dt[d] * A2_n[d]) * h[d] + x[d] * b_n


scan_chunk_forward = _parallel(_scan_chunk_forward_py)


def _scan_chunk_backward_py(
    decay, states, start, grad_y, B, C, delta, u, A, adjoint, grad_u, grad_delta, grad_A, grad_B, grad_C, scratch,
    t0, steps,
):  # fmt: skip
    """The reverse-time pass over steps `t0 + steps - 1 .. t0` of the selective scan's backward (see
    `selective_scan._scan_backward`).

    With `G_t = dL/dh_t` (total), running backwards: `G_t = C_t gy_t + a_{t+1} G_{t+1}`; `adjoint` `(batch, n, dim)`
    holds `a_{t+1} G_{t+1}` (on entry: the adjoint carried from after the span; on return: `dL/d(state before t0)`).
    Per step, with `h_{t-1}` the previous state (`start` before `t0`): `dL/d(delta_t A) = G_t a_t h_{t-1}`,
    `dL/d(delta_t u_t B_t) = G_t`, `dL/dC_t = gy_t h_t`.

    `decay`, `states` `(batch, >= steps, n, dim)`: the span's `a_t` and `h_t` (row `t - t0`); `start` `(batch, n,
    dim)`; `grad_y`, `delta`, `u`, `grad_u`, `grad_delta` `(batch, length, dim)` and `B`, `C`, `grad_B`, `grad_C`
    `(batch, length, n)` indexed by `t`; `A` `(n, dim)`. The span's rows of `grad_u`, `grad_delta`, `grad_B`,
    `grad_C` are written; `grad_A` `(batch, n, dim)` is accumulated per batch element (the caller sums it);
    `scratch` `(batch, 2, dim)`."""
    batch, _, num_states, dim = decay.shape
    for b in _prange(batch):
        delta_grad, adjoint_b = scratch[b, 0], scratch[b, 1]
        for step in range(steps - 1, -1, -1):
            t = t0 + step
            for d in range(dim):
                delta_grad[d] = 0
                adjoint_b[d] = 0
            gy, dt, ut = grad_y[b, t], delta[b, t], u[b, t]
            previous = states[b, step - 1] if step > 0 else start[b]
            for n in range(num_states):
                b_n, c_n = B[b, t, n], C[b, t, n]
                a, h, h_prev, carry = decay[b, step, n], states[b, step, n], previous[n], adjoint[b, n]
                A_n, grad_A_n = A[n], grad_A[b, n]
                sum_b = gy[0] * 0
                sum_c = gy[0] * 0
                for d in range(dim):
                    g = carry[d] + c_n * gy[d]
                    log_decay_grad = g * a[d] * h_prev[d]
                    delta_grad[d] += log_decay_grad * A_n[d]
                    grad_A_n[d] += log_decay_grad * dt[d]
                    adjoint_b[d] += g * b_n
                    sum_b += g * dt[d] * ut[d]
                    sum_c += h[d] * gy[d]
                    carry[d] = g * a[d]
                grad_B[b, t, n] = sum_b
                grad_C[b, t, n] = sum_c
            for d in range(dim):
                grad_delta[b, t, d] = delta_grad[d] + adjoint_b[d] * ut[d]
                grad_u[b, t, d] = adjoint_b[d] * dt[d]


scan_chunk_backward = _parallel(_scan_chunk_backward_py)


def set_threads(count: int) -> None:
    """Threads of the parallel kernels (numba's own pool), e.g. `torch.get_num_threads()`; bounded by numba's pool."""
    if numba is not None:
        numba.set_num_threads(max(1, min(int(count), numba.config.NUMBA_NUM_THREADS)))

PYTHON_FUNCTIONS.update(scan_chunk_forward=_scan_chunk_forward_py, scan_chunk_backward=_scan_chunk_backward_py)

__all__ = [
    "empty_outputs",
    "is_compiled",
    "mask_spectrograms",
    "overlaps_placed",
    "paint_boxes",
    "place_masks",
    "scan_chunk_backward",
    "scan_chunk_forward",
    "set_threads",
]
