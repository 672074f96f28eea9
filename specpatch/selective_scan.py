# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Mamba's selective scan (the S6 recurrence) in pure PyTorch, with optional dispatch to the fused CUDA kernels.

The recurrence, for every batch element, channel `d` and state index `n` (Mamba paper, Sec. 3, Algorithm 2):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,        y_t = sum_n C_t[n] * h_t[n] + D * u_t,

optionally gated, `y_t * silu(z_t)`. `selective_scan` has the argument names, shapes and semantics of
`mamba_ssm.ops.selective_scan_interface.selective_scan_fn`, so one can be swapped for the other:

* `u`, `delta`, `z`: `(batch, dim, length)`; `A`: `(dim, d_state)` (real);
* `B`, `C`: `(dim, d_state)` (time-invariant), `(batch, d_state, length)` (selective, shared by all channels) or
  `(batch, groups, d_state, length)` (selective, one per group of `dim / groups` consecutive channels);
* `D`, `delta_bias`: `(dim,)`; the output has the shape of `u` and its dtype.

When `mamba_ssm` is installed and the tensors are on a CUDA device the fused kernel runs; otherwise
`selective_scan_torch`. On the CPU, for Mamba's operands (`B`, `C` selective and shared by all channels, float32 or
float64), it runs compiled kernels (`cpu_kernels.py`, numba): the batch rows are split over torch's thread count
once per call and each thread takes its rows through every time step: per step one vectorised pass computes the
decays of all `d_state x dim` state entries (a float32 exp2 without libm), then the recurrence and the readout; the
state before every segment of 16 steps is saved, and the backward pass recomputes a segment's states from it (one
row at a time, so they stay in cache) and runs the reverse-time recurrence with every gradient in one more pass;
nothing of size `(batch, length, dim, d_state)` is built. Elsewhere
(GPUs without `mamba_ssm`, time-invariant or grouped `B` / `C`) the pure-PyTorch implementation, parallel over the
sequence, runs on any device:

* the sequence is cut into chunks of `chunk_size` steps; inside a chunk the linear recurrence is solved by a
  work-efficient (Blelloch) parallel scan over the pairs `(decay, input)` with the associative operator
  `(a1, x1) o (a2, x2) = (a1 a2, a2 x1 + x2)`, which only ever multiplies decays `<= 1` (no `exp` of a positive
  cumulative sum, so nothing over- or underflows however strong the decay); the state at the end of each chunk is
  carried into the next one;
* the `(batch, chunk, d_state, channels)` work tiles are the only tensors with a `d_state` axis (channels are also
  split when a tile would exceed a fixed budget), so memory stays bounded for long sequences and wide models;
* the recurrence is computed in float32 (float64 inputs stay float64), also under autocast;
* the backward pass is hand-written (a reverse-time scan of the same kind, recomputing each tile from the chunk
  states) and keeps no `(batch, length, dim, d_state)` tensor either.

`selective_scan_reference` is the slow, obviously correct loop over time steps used by the tests.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .cpu_kernels import is_compiled as _kernels_compiled
from .cpu_kernels import run_over_batch, scan_backward_rows, scan_forward_rows

# Work tiles (batch x chunk x d_state x channels elements) are kept below this size; channels are split beyond it.
# CPU tiles are large enough to amortise per-op overhead and small enough for the last-level cache; on GPUs larger
# tiles mean fewer kernel launches.
_MAX_TILE_ELEMENTS = {"cpu": 2**21, "cuda": 2**26}
_DEFAULT_CHUNK_SIZE = {"cpu": 64, "cuda": 128}
# From this many elements per time step of a tile (batch x d_state x channels), the recurrence inside a chunk runs
# as a plain loop over time steps (one fused multiply-add per step, each on a cache-resident slice) instead of the
# parallel scan: on CPU the parallel scan's extra passes and strided accesses cost more than the per-step call
# overhead once a step holds this much work (training batches). GPUs always use the parallel scan.
_SEQUENTIAL_MIN_STEP_ELEMENTS = {"cpu": 2**14}
# Tile budget of the step-by-step mode: a couple of time steps per tile, so a tile stays in the L2 cache (measured
# on a 2-core EPYC, batch 64 x 192 channels x 16 states: 2**19 is 1.5x faster than 2**21 and 2.4x than 2**22).
_SEQUENTIAL_TILE_ELEMENTS = {"cpu": 2**19}
_LOG2_E = 1.4426950408889634
# CPU path with the compiled kernels (`cpu_kernels.scan_forward_rows` / `scan_backward_rows`): the forward pass saves
# the state before every segment of this many time steps, from which the backward pass recomputes the segment's
# states (d_state 16: the saved states take about the memory of `u`).
_CPU_SEGMENT_STEPS = 16
_CPU_PARALLEL_MIN_ELEMENTS = 2**18  # scans of fewer (batch x length x channels x d_state) elements use one thread


# ----------------------------------------------------------------------------------------------------------------------
# Optional fused kernels (imported lazily, once)
# ----------------------------------------------------------------------------------------------------------------------


@functools.cache
def _mamba_ssm_selective_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or installed against another torch / CUDA: use the PyTorch path
        return None
    return selective_scan_fn


@functools.cache
def _causal_conv1d_fn():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


def mamba_kernels_available() -> dict[str, bool]:
    """Which optional fused CUDA kernels are importable: `{"selective_scan": ..., "causal_conv1d": ...}`."""
    return {
        "selective_scan": _mamba_ssm_selective_scan_fn() is not None,
        "causal_conv1d": _causal_conv1d_fn() is not None,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------------


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    reverse: bool = False,
):
    """Selective scan with `mamba_ssm`'s `selective_scan_fn` interface (see the module docstring for shapes).

    Runs `mamba_ssm`'s fused kernel for CUDA tensors when it is installed and `selective_scan_torch` otherwise.
    Returns `out` of shape `(batch, dim, length)` in `u`'s dtype, and with `return_last_state=True` also the final
    state `(batch, dim, d_state)`. `reverse=True` (not in `mamba_ssm`) scans backwards in time: the result equals
    flipping every time-dependent input along time, scanning, and flipping `out` back (the backward branch of a
    bidirectional Mamba); the last state is then the one after time step 0.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.is_cuda:
        kernel = _mamba_ssm_selective_scan_fn()
        if kernel is not None:
            if not reverse:
                return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
            u, delta, B, C, z = (_flip_time(t) for t in (u, delta, B, C, z))
            result = kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
            return (result[0].flip(-1), result[1]) if return_last_state else result.flip(-1)
    return selective_scan_torch(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, reverse=reverse
    )


def _flip_time(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` reversed along time (its last axis; a time-invariant `(dim, d_state)` operand is returned as is)."""
    return t if t is None or t.ndim == 2 else t.flip(-1)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int | None = None,
    *,
    reverse: bool = False,
):
    """The selective scan without `mamba_ssm` (compiled CPU kernels, or the chunked parallel scan in PyTorch; both
    with a hand-written backward); same interface as `selective_scan` plus `chunk_size`, the number of time steps the
    PyTorch path solves in parallel per chunk (64 on CPU and 128 on GPUs by default). Unlike `mamba_ssm`, gradients
    also flow through the returned last state. `reverse`: see `selective_scan` (the CPU kernels index time backwards;
    the PyTorch path flips)."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if A.is_complex():
        raise ValueError("The PyTorch selective scan supports real `A` only (complex `A` needs mamba_ssm's kernel).")
    device_type = u.device.type
    if chunk_size is None:
        chunk_size = _DEFAULT_CHUNK_SIZE.get(device_type, 128)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive, got {chunk_size}.")
    dtype = torch.promote_types(u.dtype, torch.float32)  # fp32 recurrence; float64 stays float64 (tests)
    with torch.autocast(device_type=device_type, enabled=False):
        # Internal layout: time before channels, so a chunk of time steps is a block of rows (a Mamba mixer's
        # `(batch, dim, length)` tensors are transposed views of such data: no copies).
        u_in, delta_in, z_in = (None if t is None else t.to(dtype) for t in (u, delta, z))
        B_internal, C_internal = _to_internal_layout(B.to(dtype)), _to_internal_layout(C.to(dtype))
        flip = reverse and not _use_cpu_kernels(u_in, B_internal, C_internal)
        if flip:  # the PyTorch path scans forwards: flip the time-dependent inputs (and the output below)
            u_in, delta_in, z_in = (None if t is None else t.flip(-1) for t in (u_in, delta_in, z_in))
            B_internal, C_internal = (t if t.ndim == 2 else t.flip(1) for t in (B_internal, C_internal))
        out, last_state = _SelectiveScanFunction.apply(
            _time_major(u_in),
            _time_major(delta_in),
            A.to(dtype).t().contiguous(),
            B_internal,
            C_internal,
            None if D is None else D.to(dtype),
            None if z_in is None else _time_major(z_in),
            None if delta_bias is None else delta_bias.to(dtype),
            delta_softplus,
            chunk_size,
            reverse and not flip,
        )
        out = (out.flip(1) if flip else out).transpose(1, 2).to(u.dtype)
        last_state = last_state.transpose(1, 2)
    return (out, last_state) if return_last_state else out


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Slow, obviously correct sequential loop over time steps (for tests only); same interface as `selective_scan`.
    Computes in float32, or float64 for float64 inputs."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = torch.promote_types(u.dtype, torch.float32)
    u_f, delta_f, A_f, B_f, C_f = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta_f = F.softplus(delta_f)
    batch, dim, length = u.shape

    def per_channel(M: torch.Tensor, t: int) -> torch.Tensor:  # -> broadcastable to (batch, dim, d_state)
        if M.ndim == 2:
            return M
        if M.ndim == 3:
            return M[:, None, :, t]
        return M[:, :, :, t].repeat_interleave(dim // M.shape[1], dim=1)

    state = u_f.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta_f[:, :, t, None] * A_f)
        state = decay * state + (delta_f[:, :, t] * u_f[:, :, t])[:, :, None] * per_channel(B_f, t)
        outputs.append((state * per_channel(C_f, t)).sum(-1))
    out = torch.stack(outputs, dim=-1)
    if D is not None:
        out = out + u_f * D.to(dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(dtype))
    out = out.to(u.dtype)
    return (out, state) if return_last_state else out


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """Depthwise causal convolution with `causal_conv1d_fn`'s interface: `x` `(batch, dim, length)`, `weight`
    `(dim, width)`, `bias` `(dim,)`, `activation` None, `"silu"` or `"swish"`:
    `out[:, d, t] = bias[d] + sum_k weight[d, k] * x[:, d, t - (width - 1) + k]` (zero before the start).

    Uses the `causal_conv1d` CUDA kernel when it is installed and `x` is on a GPU. Otherwise the `width` taps are
    accumulated as shifted multiply-adds, which keep `x`'s memory layout: a `(batch, dim, length)` view of
    `(batch, length, dim)` data (as a Mamba mixer has it) is convolved without transposing copies.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"`activation` must be None, 'silu' or 'swish', got {activation!r}.")
    if x.ndim != 3 or weight.ndim != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"Expected x (batch, dim, length) and weight (dim, width), got {tuple(x.shape)} and {tuple(weight.shape)}."
        )
    if x.is_cuda:
        kernel = _causal_conv1d_fn()
        if kernel is not None:
            return kernel(x.contiguous(), weight.contiguous(), bias, activation=activation)
    width = weight.shape[1]
    weight = weight.to(x.dtype)
    if bias is not None:  # the output takes x's layout
        out = torch.addcmul(bias.to(x.dtype)[:, None], x, weight[:, width - 1 :])
    else:
        out = x * weight[:, width - 1 :]
    for lag in range(1, min(width, x.shape[-1] + 1)):
        out[..., lag:].addcmul_(x[..., :-lag], weight[:, width - 1 - lag, None])
    return F.silu(out) if activation is not None else out


# ----------------------------------------------------------------------------------------------------------------------
# Validation and layouts
# ----------------------------------------------------------------------------------------------------------------------


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.ndim != 3:
        raise ValueError(f"`u` must have shape (batch, dim, length), got {tuple(u.shape)}.")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"`delta` must have the shape of `u` {tuple(u.shape)}, got {tuple(delta.shape)}.")
    if A.ndim != 2 or A.shape[0] != dim:
        raise ValueError(f"`A` must have shape (dim={dim}, d_state), got {tuple(A.shape)}.")
    d_state = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.ndim == 2:
            ok = M.shape == (dim, d_state)
        elif M.ndim == 3:
            ok = M.shape == (batch, d_state, length)
        elif M.ndim == 4:
            ok = M.shape[0] == batch and M.shape[2:] == (d_state, length) and M.shape[1] > 0 and dim % M.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"`{name}` must have shape (dim, d_state) = ({dim}, {d_state}), (batch, d_state, length) = "
                f"({batch}, {d_state}, {length}) or (batch, groups, d_state, length) with groups dividing dim; "
                f"got {tuple(M.shape)}."
            )
    if D is not None and D.shape != (dim,):
        raise ValueError(f"`D` must have shape (dim,) = ({dim},), got {tuple(D.shape)}.")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"`delta_bias` must have shape (dim,) = ({dim},), got {tuple(delta_bias.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"`z` must have the shape of `u` {tuple(u.shape)}, got {tuple(z.shape)}.")


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """`(batch, dim, length)` -> `(batch, length, dim)` with channels contiguous: a view when `x` already is one of
    such data (as in a Mamba mixer), a copy otherwise."""
    x = x.transpose(1, 2)
    return x if x.stride(-1) == 1 else x.contiguous()


def _to_internal_layout(M: torch.Tensor) -> torch.Tensor:
    """`B` / `C` in the scan's time-major layout, `d_state` before channels: `(dim, n)` -> `(n, dim)`,
    `(batch, n, length)` and `(batch, 1, n, length)` -> `(batch, length, n)`, `(batch, groups, n, length)` ->
    `(batch, length, n, groups)`."""
    if M.ndim == 4 and M.shape[1] == 1:
        M = M[:, 0]
    if M.ndim == 3:
        return M.transpose(1, 2).contiguous()
    if M.ndim == 4:
        return M.permute(0, 3, 2, 1).contiguous()
    return M.t().contiguous()


class _Operand:
    """`B` or `C` (internal layout) seen by `(batch, chunk, n, channels)` work tiles: tiles broadcastable against
    them, the contraction over `n` and the reduction of gradients back onto the operand."""

    def __init__(self, M: torch.Tensor, dim: int):
        self.M = M
        self.kind = M.ndim  # 2: time-invariant, 3: one per time step, 4: one per time step and channel group
        if self.kind == 4:
            self.group_of_channel = torch.arange(dim, device=M.device) // (dim // M.shape[3])

    def tile(self, t0: int, t1: int, d0: int, d1: int) -> torch.Tensor:
        if self.kind == 2:
            return self.M[:, d0:d1]  # (n, channels)
        if self.kind == 3:
            return self.M[:, t0:t1, :, None]  # (batch, chunk, n, 1)
        return self.M[:, t0:t1].index_select(3, self.group_of_channel[d0:d1])  # (batch, chunk, n, channels)

    def contract(self, tile: torch.Tensor, states: torch.Tensor, scratch: torch.Tensor, out: torch.Tensor) -> None:
        """`out[b, t, d] = sum_n tile[., t, n, d] * states[b, t, n, d]` (`scratch` has the shape of `states`)."""
        if self.kind == 3:  # one (1 x n) @ (n x channels) product per batch element and time step (batched matmul)
            out.copy_(torch.matmul(tile.transpose(2, 3), states)[:, :, 0])
            return
        torch.mul(states, tile, out=scratch)
        torch.sum(scratch, dim=2, out=out)

    def accumulate(self, grad, adjoint, weights, scratch, t0: int, t1: int, d0: int, d1: int) -> None:
        """`grad += d/dM sum(adjoint * tile * weights)` for a tile-shaped `adjoint` and `(batch, chunk, channels)`
        `weights`: sums over the channels (and over batch and time for a time-invariant operand)."""
        torch.mul(adjoint, weights[:, :, None], out=scratch)
        if self.kind == 3:
            grad[:, t0:t1] += scratch.sum(3)
        elif self.kind == 2:
            grad[:, d0:d1] += scratch.sum((0, 1))
        else:
            grad[:, t0:t1].index_add_(3, self.group_of_channel[d0:d1], scratch)


# ----------------------------------------------------------------------------------------------------------------------
# The chunked parallel scan
# ----------------------------------------------------------------------------------------------------------------------


def _progression(first: int, count: int, step: int, length: int, reverse: bool) -> slice:
    """Rows `first, first + step, ...` (`count` of them) of a chunk of `length` rows, mirrored when `reverse`."""
    if reverse:
        first = length - 1 - (first + step * (count - 1))
    return slice(first, first + step * (count - 1) + 1, step)


def _linear_scan_(a: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> None:
    """In-place inclusive scan of `h_t = a_t * h_{t-1} + x_t` along dim 1 (or `h_t = a_t * h_{t+1} + x_t` when
    `reverse`), from a zero state: on return `x` holds `h`; `a` is overwritten with partial products.

    Blelloch's work-efficient scheme: an up-sweep combines pairs of segments at distances 1, 2, 4, ... so that row
    `i` covers the segment ending at `i` of length `lowbit(i + 1)`; a down-sweep then completes every row from the
    full prefix `k` rows before it. About three row-operations per time step, in `2 log2(chunk)` tensor ops.
    """
    length = a.shape[1]
    sign = -1 if reverse else 1
    k = 1
    while 2 * k <= length:  # up-sweep
        count = length // (2 * k)
        dst = _progression(2 * k - 1, count, 2 * k, length, reverse)
        src = _progression(k - 1, count, 2 * k, length, reverse)
        x[:, dst].addcmul_(a[:, dst], x[:, src])
        if 4 * k <= length:  # the products of the widest segments are never read again
            a[:, dst].mul_(a[:, src])
        k *= 2
    k //= 2
    while k >= 1:  # down-sweep
        count = (length - k) // (2 * k)
        if count > 0:
            dst = _progression(3 * k - 1, count, 2 * k, length, reverse)
            src = slice(dst.start - sign * k, dst.stop - sign * k, dst.step)
            x[:, dst].addcmul_(a[:, dst], x[:, src])
        k //= 2


def _plan(batch: int, length: int, dim: int, d_state: int, chunk_size: int, device: torch.device):
    """Chunk length, channels per block, the chunk / channel-block boundaries, and whether the recurrence inside
    a chunk runs step by step (`sequential`; then the tile keeps all channels if it can and the chunk shrinks to fit
    the budget, since a step-by-step chunk gains nothing from length) or as a parallel scan."""
    budget = _MAX_TILE_ELEMENTS.get(device.type, 2**24)
    sequential = batch * d_state * dim >= _SEQUENTIAL_MIN_STEP_ELEMENTS.get(device.type, float("inf"))
    if sequential:
        budget = min(budget, _SEQUENTIAL_TILE_ELEMENTS.get(device.type, budget))
        channels = max(1, min(dim, budget // max(1, batch * d_state)))
        chunk = max(1, min(chunk_size, length, budget // max(1, batch * d_state * channels)))
    else:
        chunk = max(1, min(chunk_size, length))
        channels = max(1, min(dim, budget // max(1, batch * chunk * d_state)))
    chunks = [(t0, min(length, t0 + chunk)) for t0 in range(0, length, chunk)]
    blocks = [(d0, min(dim, d0 + channels)) for d0 in range(0, dim, channels)]
    return chunk, channels, chunks, blocks, sequential


def _chunks_per_saved_state(chunk: int, sequential: bool) -> int:
    """The forward pass saves the state before every this many chunks for the backward pass, which recomputes the
    ones in between: every chunk for the parallel scan (long chunks), about every 16 time steps for the step-by-step
    mode (short chunks), so the saved states take about the memory of `u` (d_state 16), and the backward pass's
    buffers for one segment (its decays and states) stay small."""
    return -(-16 // chunk) if sequential else 1


def _sequential_scan_(a: torch.Tensor, x: torch.Tensor) -> None:
    """In place along dim 1: `x_t += a_t * x_{t-1}` for t = 1, 2, ... (`a` is left unchanged)."""
    for t in range(1, x.shape[1]):
        x[:, t].addcmul_(a[:, t], x[:, t - 1])


def _sequential_reverse_scan_(a: torch.Tensor, x: torch.Tensor) -> None:
    """In place along dim 1, backwards in time: `x_t += a_{t+1} * x_{t+1}` (`a` is left unchanged)."""
    for t in range(x.shape[1] - 2, -1, -1):
        x[:, t].addcmul_(a[:, t + 1], x[:, t + 1])


class _SelectiveScanFunction(torch.autograd.Function):
    """The selective scan with its elementwise wrapping fused into one autograd node (as `mamba_ssm` does): the
    time-step transform `delta = softplus(delta_raw + delta_bias)`, the recurrence's readout
    `y[b, t, d] = sum_n C_t[n] h_t[n, d]`, the skip `+ D u` and the gate `* silu(z)`. Inputs in the internal layout:
    `u`, `delta_raw`, `z` `(batch, length, dim)` (any strides), `A` transposed `(n, dim)`, `B` / `C` from
    `_to_internal_layout`. Returns the output `(batch, length, dim)` and the last state `(batch, n, dim)`."""

    @staticmethod
    def forward(ctx, u, delta_raw, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, reverse=False):
        with torch.no_grad():
            delta = _time_steps(delta_raw, delta_bias, delta_softplus)
            if _use_cpu_kernels(u, B, C):
                y, last_state, starts = _scan_forward_cpu(u, delta, A, B, C, any(ctx.needs_input_grad), reverse)
            elif reverse:
                raise ValueError("reverse=True reaches the scan only on the CPU kernels' path.")
            else:
                y, last_state, starts = _scan_forward(u, delta, A, B, C, chunk_size, any(ctx.needs_input_grad))
            if D is not None:
                y.addcmul_(u, D)
            out = y * F.silu(z) if z is not None else y
        ctx.save_for_backward(u, delta_raw, A, B, C, D, z, delta_bias, starts, y if z is not None else None)
        ctx.delta_softplus, ctx.chunk_size, ctx.reverse = delta_softplus, chunk_size, reverse
        return out, last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last_state):
        u, delta_raw, A, B, C, D, z, delta_bias, starts, gated = ctx.saved_tensors
        with torch.autocast(device_type=u.device.type, enabled=False):
            grad_out = grad_out if grad_out is not None else torch.zeros_like(u)
            grad_z = None
            if z is not None:  # out = gated * silu(z), silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z)
                sigmoid_z = torch.sigmoid(z)
                grad_y = grad_out * z * sigmoid_z
                grad_z = grad_out * gated * sigmoid_z * (1 + z * (1 - sigmoid_z))
            else:
                grad_y = grad_out
            delta = _time_steps(delta_raw, delta_bias, ctx.delta_softplus)
            if _use_cpu_kernels(u, B, C):
                grad_u, grad_delta, grad_A, grad_B, grad_C = _scan_backward_cpu(
                    u, delta, A, B, C, starts, grad_y, grad_last_state, ctx.reverse
                )
            else:
                grad_u, grad_delta, grad_A, grad_B, grad_C = _scan_backward(
                    u, delta, A, B, C, starts, grad_y, grad_last_state, ctx.chunk_size
                )
            grad_D = None
            if D is not None:
                grad_D = (grad_y * u).sum((0, 1))
                grad_u.addcmul_(grad_y, D)
            if ctx.delta_softplus:  # softplus'(x) = sigmoid(x)
                pre = delta_raw + delta_bias if delta_bias is not None else delta_raw
                grad_delta.mul_(torch.sigmoid(pre))
            grad_bias = grad_delta.sum((0, 1)) if delta_bias is not None else None
        grads = (grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias)
        needs = ctx.needs_input_grad
        return tuple(g if needs[i] else None for i, g in enumerate(grads)) + (None, None, None)


def _time_steps(delta_raw, delta_bias, delta_softplus):
    """`softplus(delta_raw + delta_bias)` (each part optional), as a new contiguous tensor."""
    delta = delta_raw + delta_bias if delta_bias is not None else delta_raw.contiguous()
    return F.softplus(delta) if delta_softplus else delta


def _discretised_decay(delta_chunk, A2_block, out):
    """`exp(delta_t A)`, the zero-order-hold discretisation of `A`, computed as `exp2(delta_t * A log2(e))` with
    `A2_block = A log2(e)` precomputed: `exp2` is about twice as fast as `exp` on CPU."""
    torch.mul(delta_chunk[:, :, None], A2_block, out=out)
    out.exp2_()


def _chunk_states(delta, delta_u, A2_block, B_tile, carry, t0, t1, d0, d1, decay, states, sequential):
    """Fills `decay` with `exp(delta_t A)` and solves the states of one chunk and channel block into `states`
    (both `(batch, chunk, n, channels)` views), starting from `carry`, the state before `t0`. The parallel scan
    overwrites `decay` with partial products; the sequential one keeps it."""
    _discretised_decay(delta[:, t0:t1, d0:d1], A2_block, decay)
    torch.mul(delta_u[:, t0:t1, None, d0:d1], B_tile, out=states)  # delta_t * B_t * u_t
    states[:, 0].addcmul_(decay[:, 0], carry)  # fold the carried state into the first step
    if sequential:
        _sequential_scan_(decay, states)
    else:
        _linear_scan_(decay, states)


def _use_cpu_kernels(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> bool:
    """Whether the compiled CPU kernels run the scan: plain CPU tensors (not while torch.export / torch.compile /
    the JIT trace the model: they see the PyTorch path), numba installed, `B` and `C` selective and shared by all
    channels (Mamba's case), float32 or float64."""
    return (
        u.device.type == "cpu"
        and all(type(t) is torch.Tensor for t in (u, B, C))
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and _kernels_compiled()
        and B.ndim == 3
        and C.ndim == 3
        and u.dtype in (torch.float32, torch.float64)
    )


def _cpu_kernel_threads(u: torch.Tensor, d_state: int) -> int:
    """Threads for the compiled kernels: torch's intra-op thread count, one while a scan is too small to share."""
    return torch.get_num_threads() if u.numel() * d_state >= _CPU_PARALLEL_MIN_ELEMENTS else 1


def _cpu_segment_count(length: int) -> int:
    return -(-length // _CPU_SEGMENT_STEPS)


def _scan_forward_cpu(u, delta, A, B, C, save_starts=False, reverse=False):
    """`_scan_forward` with the compiled kernels: `cpu_kernels.scan_forward_rows` runs the discretisation, the
    recurrence and the readout in one pass, parallel over the batch (one hand-off to the threads per call: each
    takes its rows through every step). `starts`: the state before every segment of `_CPU_SEGMENT_STEPS` steps
    (with `save_starts`, for the backward pass). `reverse`: the scan runs from the last time step to the first
    (segments count in scan order)."""
    batch, length, dim = u.shape
    d_state = A.shape[0]
    u, delta = u.contiguous(), delta.contiguous()
    y = u.new_empty(batch, length, dim)
    carry = u.new_zeros(batch, d_state, dim)
    starts = u.new_empty(_cpu_segment_count(length) if save_starts else 0, batch, d_state, dim)
    arrays = [t.numpy() for t in (delta, A * _LOG2_E, delta * u, B, C, carry, starts, y)]
    run_over_batch(
        scan_forward_rows, batch, _cpu_kernel_threads(u, d_state), *arrays, _CPU_SEGMENT_STEPS, save_starts,
        u.dtype == torch.float32, reverse,
    )  # fmt: skip
    return y, carry, starts


def _scan_backward_cpu(u, delta, A, B, C, starts, grad_y, grad_last_state, reverse=False):
    """`_scan_backward` with the compiled kernels: `cpu_kernels.scan_backward_rows` takes each batch row through its
    segments, last first: the segment's decays and states recomputed from the saved start, then the reverse-time
    pass with every gradient, parallel over the batch."""
    batch, length, dim = u.shape
    d_state = A.shape[0]
    u, delta = u.contiguous(), delta.contiguous()
    grad_y = grad_y.contiguous() if grad_y is not None else torch.zeros_like(u)
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_A_per_batch = u.new_zeros(batch, d_state, dim)
    grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
    if grad_last_state is not None:
        adjoint = grad_last_state.to(u.dtype).contiguous().clone()
    else:
        adjoint = u.new_zeros(batch, d_state, dim)
    arrays = [
        t.numpy()
        for t in (delta, A * _LOG2_E, delta * u, B, C, starts, grad_y, u, A, adjoint, grad_u, grad_delta,
                  grad_A_per_batch, grad_B, grad_C)
    ]  # fmt: skip
    run_over_batch(
        scan_backward_rows, batch, _cpu_kernel_threads(u, d_state), *arrays, _CPU_SEGMENT_STEPS,
        u.dtype == torch.float32, reverse,
    )  # fmt: skip
    return grad_u, grad_delta, grad_A_per_batch.sum(0), grad_B, grad_C


def _scan_forward(u, delta, A, B, C, chunk_size, save_starts=False):
    """`y`, the last state, and (with `save_starts`, for the backward pass) the state before every chunk,
    `(chunks, batch, n, dim)` (an empty tensor otherwise)."""
    batch, length, dim = u.shape
    d_state = A.shape[0]
    chunk, channels, chunks, blocks, sequential = _plan(batch, length, dim, d_state, chunk_size, u.device)
    per_saved = _chunks_per_saved_state(chunk, sequential)
    starts = u.new_empty(-(-len(chunks) // per_saved) if save_starts else 0, batch, d_state, dim)
    if save_starts:
        starts[0] = 0
    B_op, C_op = _Operand(B, dim), _Operand(C, dim)
    y = u.new_empty(batch, length, dim)
    last_state = u.new_empty(batch, d_state, dim)
    # two state buffers used in turn: the carry (last state of a chunk) stays valid while the next chunk is solved
    decay_buffer, scratch_buffer, *state_buffers = (u.new_empty(batch, chunk, d_state, channels) for _ in range(4))
    delta_u = delta * u
    A2 = A * _LOG2_E
    for d0, d1 in blocks:
        carry = u.new_zeros(batch, d_state, d1 - d0)
        for index, (t0, t1) in enumerate(chunks):
            rows, cols = t1 - t0, d1 - d0
            if save_starts and index > 0 and index % per_saved == 0:
                starts[index // per_saved, :, :, d0:d1] = carry
            states = state_buffers[index % 2][:, :rows, :, :cols]
            _chunk_states(
                delta, delta_u, A2[:, d0:d1], B_op.tile(t0, t1, d0, d1), carry, t0, t1, d0, d1,
                decay_buffer[:, :rows, :, :cols], states, sequential,
            )  # fmt: skip
            carry = states[:, -1]
            C_op.contract(C_op.tile(t0, t1, d0, d1), states, scratch_buffer[:, :rows, :, :cols], y[:, t0:t1, d0:d1])
        last_state[:, :, d0:d1] = carry
    return y, last_state, starts


def _scan_backward(u, delta, A, B, C, starts, grad_y, grad_last_state, chunk_size):
    """Gradients of `_SelectiveScanFunction` w.r.t. `(u, delta, A, B, C)`.

    With `G_t = dL/dh_t` (total), the adjoint recurrence runs backwards in time,
    `G_t = C_t gy_t + exp(delta_{t+1} A) G_{t+1}`, and is solved with the same chunked scan in reverse. Per chunk
    the forward states are recomputed from the chunk-start states saved by the forward pass (`starts`, one per
    `_chunks_per_saved_state` chunks: the ones in between are recomputed by a forward sweep). Then, with
    `a_t = exp(delta_t A)` and `h_{t-1}` the previous state,
    `dL/d(delta_t A) = G_t a_t h_{t-1}`, `dL/d(delta_t u_t B_t) = G_t`, `dL/dC_t = gy_t h_t`.
    """
    batch, length, dim = u.shape
    d_state = A.shape[0]
    chunk, channels, chunks, blocks, sequential = _plan(batch, length, dim, d_state, chunk_size, u.device)
    B_op, C_op = _Operand(B, dim), _Operand(C, dim)
    grad_y = grad_y.contiguous() if grad_y is not None else torch.zeros_like(u)
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_A, grad_B, grad_C = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
    per_saved = _chunks_per_saved_state(chunk, sequential)
    work_buffer, adjoint_buffer, scratch_buffer = (u.new_empty(batch, chunk, d_state, channels) for _ in range(3))
    if sequential:  # decays and states of a whole segment of chunks, recomputed once from its saved start
        decay_buffer, state_buffer = (u.new_empty(batch, per_saved * chunk, d_state, channels) for _ in range(2))
    else:  # one chunk's, recomputed from its saved start
        decay_buffer, state_buffer = (u.new_empty(batch, chunk, d_state, channels) for _ in range(2))
    delta_u = delta * u
    A2 = A * _LOG2_E
    for d0, d1 in blocks:
        cols = d1 - d0
        A_block, A2_block = A[:, d0:d1], A2[:, d0:d1]
        # reverse sweep over chunks
        if grad_last_state is not None:
            adjoint_carry = grad_last_state[:, :, d0:d1].to(u.dtype)
        else:
            adjoint_carry = u.new_zeros(batch, d_state, cols)
        for index in reversed(range(len(chunks))):
            (t0, t1) = chunks[index]
            rows = t1 - t0
            work, adjoint, scratch = (b[:, :rows, :, :cols] for b in (work_buffer, adjoint_buffer, scratch_buffer))
            delta_chunk, u_chunk, gy_chunk = (t[:, t0:t1, d0:d1] for t in (delta, u, grad_y))
            B_tile, C_tile = B_op.tile(t0, t1, d0, d1), C_op.tile(t0, t1, d0, d1)
            if sequential:
                if index % per_saved == per_saved - 1 or index == len(chunks) - 1:  # entering a segment (from its end)
                    first = index - index % per_saved
                    segment_t0, segment_start = chunks[first][0], starts[first // per_saved, :, :, d0:d1]
                    carry = segment_start
                    for s0, s1 in chunks[first : index + 1]:  # the decays a_t and states h_t of the segment
                        rows_s = slice(s0 - segment_t0, s1 - segment_t0)
                        segment_states = state_buffer[:, rows_s, :, :cols]
                        _chunk_states(
                            delta, delta_u, A2_block, B_op.tile(s0, s1, d0, d1), carry, s0, s1, d0, d1,
                            decay_buffer[:, rows_s, :, :cols], segment_states, True,
                        )  # fmt: skip
                        carry = segment_states[:, -1]
                offset = t0 - segment_t0
                decay = decay_buffer[:, offset : offset + rows, :, :cols]
                states = state_buffer[:, offset : offset + rows, :, :cols]
                start = segment_start if index == first else state_buffer[:, offset - 1, :, :cols]
            else:
                start = starts[index, :, :, d0:d1]
                decay, states = decay_buffer[:, :rows, :, :cols], state_buffer[:, :rows, :, :cols]
                # the decays a_t (kept) and the recomputed states
                _discretised_decay(delta_chunk, A2_block, decay)
                torch.mul(delta_u[:, t0:t1, None, d0:d1], B_tile, out=states)
                states[:, 0].addcmul_(decay[:, 0], start)
                work.copy_(decay)
                _linear_scan_(work, states)
            # adjoint: G_t = C_t gy_t + a_{t+1} G_{t+1}; the last row also receives the carried adjoint
            torch.mul(gy_chunk[:, :, None], C_tile, out=adjoint)
            adjoint[:, -1] += adjoint_carry
            if sequential:
                _sequential_reverse_scan_(decay, adjoint)
            else:
                work[:, : rows - 1] = decay[:, 1:]  # a_{t+1}
                work[:, rows - 1] = 1.0
                _linear_scan_(work, adjoint, reverse=True)
            # dL/d(delta_t A) = (G_t a_t) h_{t-1}; G_t a_t at the chunk's first step is dL/d(state before the chunk)
            log_decay_grad = work
            torch.mul(adjoint, decay, out=log_decay_grad)
            adjoint_carry = log_decay_grad[:, 0].clone()
            log_decay_grad[:, 1:].mul_(states[:, :-1])
            log_decay_grad[:, 0].mul_(start)
            torch.mul(log_decay_grad, A_block, out=scratch)
            grad_delta_chunk = scratch.sum(2)
            torch.mul(log_decay_grad, delta_chunk[:, :, None], out=scratch)
            grad_A[:, d0:d1] += scratch.sum((0, 1))
            # through delta_t u_t B_t, then y_t = C_t . h_t
            adjoint_B = u.new_empty(batch, rows, cols)
            B_op.contract(B_tile, adjoint, scratch, adjoint_B)
            grad_delta[:, t0:t1, d0:d1] = grad_delta_chunk.addcmul_(adjoint_B, u_chunk)
            torch.mul(adjoint_B, delta_chunk, out=grad_u[:, t0:t1, d0:d1])
            B_op.accumulate(grad_B, adjoint, delta_u[:, t0:t1, d0:d1], scratch, t0, t1, d0, d1)
            C_op.accumulate(grad_C, states, gy_chunk, scratch, t0, t1, d0, d1)
    return grad_u, grad_delta, grad_A, grad_B, grad_C


__all__ = [
    "selective_scan",
    "selective_scan_torch",
    "selective_scan_reference",
    "causal_conv1d",
    "mamba_kernels_available",
]
