# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Loops compiled with numba (when it is installed): SpecMask's per-sample Algorithm 1 and fill, the CPU selective
scan's forward and backward passes (`scan_forward_rows`, `scan_backward_rows`, used by `selective_scan.py`), and the
feature extractor's framing / windowing and power spectrum (`windowed_frames`, `power_spectrum`).

SpecMask (FFTP paper, Algorithm 1):

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
results: every random number comes from one SplitMix64 stream (`uniform`, seeded with one integer per batch) in a
fixed order, computed in uint64 arithmetic when compiled and with Python integers otherwise, so the masks do not
depend on whether numba is installed. (Without numba the selective scan takes its PyTorch path instead of running
the scan functions uncompiled.)
"""

from __future__ import annotations

import concurrent.futures
import math
import os

import numpy as np
import torch

try:  # numba is optional at import time: the uncompiled functions give the same results, only slower
    import numba
except Exception:  # pragma: no cover - exercised only where numba is missing or broken
    numba = None


def _compiled(function, **options):
    """`function` compiled by numba (no Python objects, cached on disk, releases the GIL), or itself without numba."""
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


# SpecMask's random numbers: SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
# OOPSLA 2014; the generator of Java's SplittableRandom and the seeder of the xoshiro family), a 64-bit state advanced
# by a constant and a mixing function of the state as output; doubles in [0, 1) from the top 53 bits. Seeding it is
# one integer: building a numpy Generator per batch (SeedSequence, PCG64, Generator) took 0.1-0.2 ms with the caches
# cold, as in a training step, 4x the whole placement of an AudioSet batch.
_SPLITMIX_GAMMA, _SPLITMIX_MIX1, _SPLITMIX_MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_UINT64 = 2**64 - 1
_GAMMA_U64, _MIX1_U64, _MIX2_U64 = np.uint64(_SPLITMIX_GAMMA), np.uint64(_SPLITMIX_MIX1), np.uint64(_SPLITMIX_MIX2)
_SHIFTS_U64 = (np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11))


def _uniform_py(state):
    """The next double in [0, 1) of the SplitMix64 stream whose state is `state[0]` (a one-element uint64 array,
    advanced in place). Python integers: what runs without numba (`_uniform_uint64` compiles the same steps)."""
    s = (int(state[0]) + _SPLITMIX_GAMMA) & _UINT64
    state[0] = s
    z = ((s ^ (s >> 30)) * _SPLITMIX_MIX1) & _UINT64
    z = ((z ^ (z >> 27)) * _SPLITMIX_MIX2) & _UINT64
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def _uniform_uint64(state):
    """`_uniform_py` in uint64 arithmetic (wrapping, as SplitMix64 is defined), for numba."""
    shift30, shift27, shift31, shift11 = _SHIFTS_U64
    s = state[0] + _GAMMA_U64
    state[0] = s
    z = (s ^ (s >> shift30)) * _MIX1_U64
    z = (z ^ (z >> shift27)) * _MIX2_U64
    return float((z ^ (z >> shift31)) >> shift11) * 2.0**-53


uniform = _uniform_py if numba is None else _compiled(_uniform_uint64)


def _place_masks_py(
    seed, num_frames, num_mel, budget, max_height, max_width, full_frequency_prob, max_tries, max_draws,
    boxes, full_frequency, count, area, draws,
):  # fmt: skip
    """Algorithm 1 for each of the `boxes.shape[0]` samples in turn, with the random numbers of the SplitMix64
    stream seeded with `seed` (an integer in [0, 2^63); `uniform`), in this order per drawn mask: type, width,
    height, then (frame, mel) position per try.

    Outputs (preallocated, filled in place): `boxes` `(batch, capacity, 4)` int64 rows `(frame_start, mel_start,
    width, height)` of the placed masks in placement order; `full_frequency` `(batch, capacity)` bool; `count`,
    `area`, `draws` `(batch,)` int64: masks placed, cells masked, masks drawn (placed or dropped). `capacity` must be
    at least `min(max_draws, budget)`: a sample places at most one mask per draw and stops once its area (at least
    one cell per mask) reaches the budget.
    """
    rng = np.empty(1, np.uint64)
    rng[0] = seed
    for sample in range(boxes.shape[0]):
        placed = 0
        masked = 0
        drawn = 0
        while masked < budget and drawn < max_draws:  # lines 8-20
            drawn += 1
            # lines 9-14: type and size (a full-frequency mask spans all mel bins; its height draw is unused)
            is_full = uniform(rng) < full_frequency_prob
            width = int(uniform(rng) * max_width) + 1
            u_height = uniform(rng)
            height = num_mel if is_full else int(u_height * max_height) + 1
            # lines 15-16: up to max_tries positions, uniform where the mask fits; the first free one is kept
            for _ in range(max_tries):
                t0 = int(uniform(rng) * (num_frames - width + 1))
                f0 = int(uniform(rng) * (num_mel - height + 1))
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


def _paint_sample_py(target, sample, value, boxes, count):
    """`target[sample, t0:t0 + w, f0:f0 + h] = value` for the first `count[sample]` boxes `(t0, f0, w, h)` of
    `sample`, in place (`target` `(batch, frames, mel)`)."""
    for k in range(count[sample]):
        t0, f0 = boxes[sample, k, 0], boxes[sample, k, 1]
        target[sample, t0 : t0 + boxes[sample, k, 2], f0 : f0 + boxes[sample, k, 3]] = value


_paint_sample = _compiled(_paint_sample_py)


def _paint_boxes_py(target, values, boxes, count):
    """`_paint_sample` for every sample `b` with `values[b]` (`values` `(batch,)` of target's dtype)."""
    for sample in range(target.shape[0]):
        _paint_sample(target, sample, values[sample], boxes, count)


paint_boxes = _compiled(_paint_boxes_py)


def _mask_spectrograms_py(source, target, values, copy, use_mean, boxes, count, first, last):
    """SpecMask's fill for float32 / float64 spectrograms on the CPU, one sample at a time while it is in cache:
    with `copy`, `target[b] = source[b]` (else `target` is `source`, masked in place); with `use_mean`,
    `values[b]` = the mean of `source[b]` (accumulated in float64), computed in the same pass as the copy; then the
    sample's boxes are painted with `values[b]`. `source`, `target`: C-contiguous `(batch, frames, mel)` of one dtype;
    `values`: `(batch,)` of that dtype (read when `use_mean` is false). Only the samples `first .. last - 1` are
    processed (`run_over_batch` splits a batch over threads)."""
    batch = source.shape[0]
    size = source.shape[1] * source.shape[2]
    flat_source = source.reshape(batch, size)
    flat_target = target.reshape(batch, size)
    for sample in range(first, last):
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
        _paint_sample(target, sample, values[sample], boxes, count)


# reassociation lets the compiler vectorise the sum (float64 accumulation keeps it accurate)
mask_spectrograms = _compiled(_mask_spectrograms_py, fastmath={"reassoc"})

PYTHON_FUNCTIONS = {
    "overlaps_placed": _overlaps_placed_py,
    "place_masks": _place_masks_py,
    "uniform": _uniform_py,
    "paint_boxes": _paint_boxes_py,
    "mask_spectrograms": _mask_spectrograms_py,
}
"""The uncompiled functions (what runs without numba), for tests that compare them with the compiled ones."""


def is_compiled() -> bool:
    """Whether the kernels run compiled (numba importable)."""
    return numba is not None


def empty_host_tensor(shape, dtype, device=None) -> torch.Tensor:
    """An uninitialised contiguous tensor; on the CPU backed by a numpy array. numpy asks the kernel for huge pages
    on large arrays (`madvise`), so a fresh batch-sized buffer (16 MB of features or spectrograms) costs a few
    page faults instead of one per 4 KB page, which cost several ms per batch whenever the memory was returned to
    the system in between (torch's own CPU allocation). Any dtype: those numpy lacks (bfloat16) through an integer
    type of the same width."""
    if device is not None and torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    np_type = _NUMPY_DTYPES.get(dtype)
    if np_type is not None:
        return torch.from_numpy(np.empty(tuple(shape), np_type))
    return torch.from_numpy(np.empty(tuple(shape), _NUMPY_INTS[dtype.itemsize])).view(dtype)  # e.g. bfloat16


_NUMPY_DTYPES = {
    torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64, torch.bool: np.bool_,
    torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64,
    torch.complex64: np.complex64, torch.complex128: np.complex128,
}  # fmt: skip
_NUMPY_INTS = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


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
# Selective scan (Mamba's S6 recurrence): `selective_scan.py`'s CPU path
# ----------------------------------------------------------------------------------------------------------------------


def _kernel(function):
    """Compiled with numba (fastmath reassociation and contraction, so that reductions vectorise and multiply-adds
    fuse), cached, releasing the GIL: the scan kernels run on slices of the batch in several Python threads at once
    (`run_over_batch`)."""
    return _compiled(function, fastmath={"reassoc", "contract"})


_POOL: list = [None]


def _reset_pool() -> None:  # a forked child must not use its parent's threads
    _POOL[0] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool)


def thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process's worker threads for CPU work split by hand (the kernels below, the feature extractor's chunks),
    kept between calls instead of started for every call. (On the 2-core test machine the difference for the
    feature extractor was within the noise.)"""
    if _POOL[0] is None or _POOL[0]._max_workers < workers:
        _POOL[0] = concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, os.cpu_count() or 1))
    return _POOL[0]


def run_over_batch(kernel, batch: int, threads: int, *args) -> None:
    """`kernel(*args, first, last)` over the batch rows `first .. last - 1`, split into `threads` slices that run at
    once in a thread pool (the compiled kernels release the GIL). numba's own parallel loops are not used: their
    OpenMP runtime and PyTorch's, both spinning, slowed every other op of a training step down several times."""
    threads = max(1, min(int(threads), batch))
    if threads == 1 or numba is None:
        kernel(*args, 0, batch)
        return
    pool = thread_pool(threads)
    bounds = [batch * i // threads for i in range(threads + 1)]
    futures = [pool.submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, threads)]
    kernel(*args, bounds[0], bounds[1])
    for future in futures:
        future.result()


# 2^f on [0, 1) as a degree-6 polynomial (least squares in relative error on Chebyshev nodes; relative error of the
# float32 exp2 below <= 6.2e-8, half a float32 ulp), Horner coefficients from the constant term up.
_EXP2_COEFFICIENTS = (1.0, 0.693146987, 0.240229796, 0.0554835247, 0.00967847255, 0.00124430815, 0.000216906092)
_EXP2_COEFFICIENTS_F32 = tuple(np.float32(c) for c in _EXP2_COEFFICIENTS)


def _exp2_py(exponent, out, scale, scale_bits, fast):
    """`out[i] = 2 ** exponent[i]` over 1-D arrays. With `fast` (float32 arrays), without calls to libm so that the
    compiler vectorises it: the exponent is clamped to [-126, 127] (beyond, float32 under- or overflows anyway), split
    as `k + f` with `k = floor`, `2^f` from `_EXP2_COEFFICIENTS` and `2^k` built from its IEEE-754 bits
    (`scale_bits`, an int32 view of the float32 array `scale`). Otherwise `math.exp2`."""
    if fast:  # float32 throughout (a float64 constant or math.floor would widen the loop to float64 lanes)
        c0, c1, c2, c3, c4, c5, c6 = _EXP2_COEFFICIENTS_F32
        low, high = np.float32(-126.0), np.float32(127.0)
        for i in range(out.shape[0]):
            v = min(max(exponent[i], low), high)
            whole = np.floor(v)
            scale_bits[i] = (np.int32(whole) + np.int32(127)) << np.int32(23)
            f = v - whole
            out[i] = c0 + f * (c1 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * c6)))))
        for i in range(out.shape[0]):
            out[i] *= scale[i]
    else:
        for i in range(out.shape[0]):
            out[i] = math.exp2(exponent[i])


_exp2 = _kernel(_exp2_py)


def _forward_row_py(
    delta, A2, delta_u, B, C, h, decay, states, y, t0, steps, save, compute_y, fast_exp, reverse, work
):  # fmt: skip
    """Steps `t0 .. t0 + steps - 1` of one batch row's recurrence `h_t = a_t h_{t-1} + (delta_t u_t) B_t` with
    `a_t = exp(delta_t A) = exp2(delta_t A log2(e))`, and the readout `y_t = sum_n C_t[n] h_t[n]`.

    The row's `delta`, `delta_u`, `y` `(length, dim)` and `B`, `C` `(length, n)` are indexed by `t`; `A2` `(n, dim)`
    is `A log2(e)`; `h` `(n, dim)`: the state before `t0` on entry, the last state on return (`A2`, `h` C-contiguous).
    With `compute_y`, the span's rows of `y` are written; with `save`, the decays and states go to `decay` and
    `states` `(>= steps, n, dim)` (row `t - t0`; placeholders otherwise). Per step, the decays of all `n x dim`
    state entries in one vectorised pass (`_exp2`; `fast_exp` for float32 rows, libm's exp2 otherwise), then the
    update and readout. With `reverse`, step `t` of the recurrence reads and writes time index `length - 1 - t`
    (a scan backwards in time without flipped copies). `work`: scratch from `_row_work`."""
    num_states, dim = h.shape
    size = num_states * dim
    length = delta.shape[0]
    exponent, a, scale = work[0], work[1], work[2].view(np.float32)
    scale_bits = work[2]
    A2_flat = A2.reshape(size)
    for step in range(steps):
        t = length - 1 - (t0 + step) if reverse else t0 + step
        x, dt = delta_u[t], delta[t]
        for n in range(num_states):
            for d in range(dim):
                exponent[n * dim + d] = dt[d] * A2_flat[n * dim + d]
        _exp2(exponent, a, scale, scale_bits, fast_exp)
        out = y[t] if compute_y else y[0]  # `y` may be a placeholder when unused
        if compute_y:
            for d in range(dim):
                out[d] = 0
        for n in range(num_states):
            b_n, c_n = B[t, n], C[t, n]
            h_n, a_n = h[n], a[n * dim : (n + 1) * dim]
            if save:
                a_out, h_out = decay[step, n], states[step, n]
                for d in range(dim):
                    value = a_n[d] * h_n[d] + x[d] * b_n
                    h_n[d] = value
                    a_out[d] = a_n[d]
                    h_out[d] = value
            elif compute_y:
                for d in range(dim):
                    value = a_n[d] * h_n[d] + x[d] * b_n
                    h_n[d] = value
                    out[d] += c_n * value
            else:
                for d in range(dim):
                    h_n[d] = a_n[d] * h_n[d] + x[d] * b_n


_forward_row = _kernel(_forward_row_py)


def _row_work_py(num_states, dim, dtype):
    """Scratch of `_forward_row`, allocated once per thread: exponents and decays (`dtype`), and the int32 bits of
    the float32 powers of two."""
    size = num_states * dim
    return (np.empty(size, dtype), np.empty(size, dtype), np.empty(size, np.int32))


_row_work = _compiled(_row_work_py)


def _backward_row_py(
    decay, states, start, grad_y, B, C, delta, u, A, adjoint, grad_u, grad_delta, grad_A, grad_B, grad_C, scratch,
    t0, steps, reverse,
):  # fmt: skip
    """The reverse-time pass over steps `t0 + steps - 1 .. t0` of one batch row's selective scan backward (see
    `selective_scan._scan_backward`).

    With `G_t = dL/dh_t` (total), running backwards: `G_t = C_t gy_t + a_{t+1} G_{t+1}`; `adjoint` `(n, dim)` holds
    `a_{t+1} G_{t+1}` (on entry: the adjoint carried from after the span; on return: `dL/d(state before t0)`). Per
    step, with `h_{t-1}` the previous state (`start` before `t0`): `dL/d(delta_t A) = G_t a_t h_{t-1}`,
    `dL/d(delta_t u_t B_t) = G_t`, `dL/dC_t = gy_t h_t`.

    `decay`, `states` `(>= steps, n, dim)`: the span's `a_t` and `h_t` (row `t - t0`); `start` `(n, dim)`; the row's
    `grad_y`, `delta`, `u`, `grad_u`, `grad_delta` `(length, dim)` and `B`, `C`, `grad_B`, `grad_C` `(length, n)`
    indexed by `t`; `A` `(n, dim)`. The span's rows of `grad_u`, `grad_delta`, `grad_B`, `grad_C` are written;
    `grad_A` `(n, dim)` is accumulated (the row's share; the caller sums the rows); `scratch` `(2, dim)`. `reverse`:
    as in `_forward_row_py`."""
    _, num_states, dim = decay.shape
    length = delta.shape[0]
    delta_grad, adjoint_sum = scratch[0], scratch[1]
    for step in range(steps - 1, -1, -1):
        t = length - 1 - (t0 + step) if reverse else t0 + step
        for d in range(dim):
            delta_grad[d] = 0
            adjoint_sum[d] = 0
        gy, dt, ut = grad_y[t], delta[t], u[t]
        previous = states[step - 1] if step > 0 else start
        for n in range(num_states):
            b_n, c_n = B[t, n], C[t, n]
            a, h, h_prev, carry = decay[step, n], states[step, n], previous[n], adjoint[n]
            A_n, grad_A_n = A[n], grad_A[n]
            sum_b = gy[0] * np.float32(0)  # the rows' dtype (an integer 0 would make it float64 for float32 rows)
            sum_c = gy[0] * np.float32(0)
            for d in range(dim):
                g = carry[d] + c_n * gy[d]
                log_decay_grad = g * a[d] * h_prev[d]
                delta_grad[d] += log_decay_grad * A_n[d]
                grad_A_n[d] += log_decay_grad * dt[d]
                adjoint_sum[d] += g * b_n
                sum_b += g * dt[d] * ut[d]
                sum_c += h[d] * gy[d]
                carry[d] = g * a[d]
            grad_B[t, n] = sum_b
            grad_C[t, n] = sum_c
        for d in range(dim):
            grad_delta[t, d] = delta_grad[d] + adjoint_sum[d] * ut[d]
            grad_u[t, d] = adjoint_sum[d] * dt[d]


_backward_row = _kernel(_backward_row_py)


def _scan_forward_rows_py(delta, A2, delta_u, B, C, carry, starts, y, segment_steps, save_starts, fast_exp, reverse,
                          first, last):  # fmt: skip
    """The whole forward scan of the batch rows `first .. last - 1` (`_forward_row`, readout into `y`), each row
    from its first step to its last: rows are independent, so a thread takes its rows through every step without
    waiting for the others. `delta`, `delta_u`, `y` `(batch, length, dim)`, `B`, `C` `(batch, length, n)`, `A2`
    `(n, dim)`; `carry` `(batch, n, dim)`: the initial states on entry, the last states on return. With
    `save_starts`, the state before every span of `segment_steps` steps (in scan order) goes to `starts[k, b]`
    `(segments, batch, n, dim)`, for the backward pass."""
    length = delta.shape[1]
    unused = np.empty((1, 1, 1), delta.dtype)
    work = _row_work(carry.shape[1], carry.shape[2], delta.dtype)
    for b in range(first, last):
        h = carry[b]
        for t0 in range(0, length, segment_steps):
            if save_starts:
                starts[t0 // segment_steps, b] = h
            steps = min(segment_steps, length - t0)
            _forward_row(delta[b], A2, delta_u[b], B[b], C[b], h, unused, unused, y[b], t0, steps, False, True,
                         fast_exp, reverse, work)  # fmt: skip


scan_forward_rows = _kernel(_scan_forward_rows_py)


def _scan_backward_rows_py(
    delta, A2, delta_u, B, C, starts, grad_y, u, A, adjoint, grad_u, grad_delta, grad_A, grad_B, grad_C,
    segment_steps, fast_exp, reverse, first, last,
):  # fmt: skip
    """The whole backward scan of the batch rows `first .. last - 1`, span by span from the last: the span's decays
    and states recomputed from its saved start (`_forward_row` with `save`, into buffers of one span of one row,
    which stay in cache), then its reverse-time pass (`_backward_row`). `starts` as saved by `scan_forward_rows`;
    `adjoint` `(batch, n, dim)`: the gradient of the last state on entry, of the initial state on return; `grad_A`
    `(batch, n, dim)` per row (the caller sums it); the other arguments as in `_backward_row_py`, for the batch."""
    _, length, dim = delta.shape
    num_states = A.shape[0]
    decay = np.empty((segment_steps, num_states, dim), delta.dtype)
    states = np.empty((segment_steps, num_states, dim), delta.dtype)
    h = np.empty((num_states, dim), delta.dtype)
    scratch = np.empty((2, dim), delta.dtype)
    unused = np.empty((1, 1), delta.dtype)
    work = _row_work(num_states, dim, delta.dtype)
    segments = (length + segment_steps - 1) // segment_steps
    for b in range(first, last):
        for index in range(segments - 1, -1, -1):
            t0 = index * segment_steps
            steps = min(segment_steps, length - t0)
            h[:, :] = starts[index, b]
            _forward_row(delta[b], A2, delta_u[b], B[b], C[b], h, decay, states, unused, t0, steps, True, False,
                         fast_exp, reverse, work)  # fmt: skip
            _backward_row(
                decay, states, starts[index, b], grad_y[b], B[b], C[b], delta[b], u[b], A, adjoint[b], grad_u[b],
                grad_delta[b], grad_A[b], grad_B[b], grad_C[b], scratch, t0, steps, reverse,
            )  # fmt: skip


scan_backward_rows = _kernel(_scan_backward_rows_py)


# ----------------------------------------------------------------------------------------------------------------------
# Front end (`feature_extraction_specpatch.py`'s CPU path): the elementwise passes around the FFT, fused
# ----------------------------------------------------------------------------------------------------------------------


def _windowed_frames_py(signal, first_frame, hop, preemphasis, offsets, window, buffer):
    """Writes frames `first_frame .. first_frame + buffer.shape[0] - 1` of the flat float32 `signal` (frame `f` is
    `signal[f * hop : f * hop + win]`, `win = window.shape[0]`), windowed, into the first `win` columns of the float64
    FFT buffer `buffer` `(frames, n_fft)` (its zero padding is left untouched).

    With `preemphasis != 0` (Kaldi): sample `i >= 1` of a frame becomes `(x[i] - preemphasis * x[i - 1] -
    offsets[frame]) * window[i]` (pre-emphasis of the raw samples, then Kaldi's DC removal folded into one offset per
    frame, see `_log_mel`); sample 0, where Kaldi's window is 0, is written as 0. Otherwise `x[i] * window[i]`.
    Arithmetic in float64, in the same order as the torch ops it replaces (one pass instead of four)."""
    win = window.shape[0]
    for i in range(buffer.shape[0]):
        base = (first_frame + i) * hop
        if preemphasis != 0.0:
            offset = offsets[first_frame + i]
            buffer[i, 0] = 0.0
            previous = np.float64(signal[base])
            for j in range(1, win):
                current = np.float64(signal[base + j])
                buffer[i, j] = ((current - preemphasis * previous) - offset) * window[j]
                previous = current
        else:
            for j in range(win):
                buffer[i, j] = np.float64(signal[base + j]) * window[j]


windowed_frames = _compiled(_windowed_frames_py)


def _power_spectrum_py(spectrum, out):
    """`out[i, k] = re^2 + im^2` of the complex128 spectrum given as its float64 `(frames, bins, 2)` real view, summed
    in float64 and stored in the float32 `out` (one pass instead of square, add and cast)."""
    for i in range(out.shape[0]):
        for k in range(out.shape[1]):
            re = spectrum[i, k, 0]
            im = spectrum[i, k, 1]
            out[i, k] = re * re + im * im


power_spectrum = _compiled(_power_spectrum_py)


PYTHON_FUNCTIONS.update(
    exp2=_exp2_py,
    windowed_frames=_windowed_frames_py,
    power_spectrum=_power_spectrum_py,
    scan_forward_rows=_scan_forward_rows_py,
    scan_backward_rows=_scan_backward_rows_py,
)

__all__ = [
    "empty_host_tensor",
    "empty_outputs",
    "is_compiled",
    "mask_spectrograms",
    "overlaps_placed",
    "paint_boxes",
    "place_masks",
    "power_spectrum",
    "scan_backward_rows",
    "scan_forward_rows",
    "run_over_batch",
    "uniform",
    "windowed_frames",
]
