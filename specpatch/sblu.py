# Copyright 2025 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Structured Bilateral Laplace Unit (SBLU) of AaPE (aape.txt Sec. III-B, III-C, Appendices A-C).

The AaPE text lost its inline equations; the forms used here are the reconstruction of
``../shared/papers/NOTES.md`` ("AaPE: what the lost math most likely was").

Convention used everywhere in this module (kernel, reference, custom backward, tests)
------------------------------------------------------------------------------------
For one channel with decay ``alpha`` and frequency ``omega`` (radians per frame), ``c = (K - 1) / 2`` and
``m = -c .. c``::

    h[m] = exp(-alpha * |m|) * exp(i * omega * m)                     (Eq. 2, two-sided exponential window)
    S[n] = sum_m h[m] * x[n * s - m]                                  (true convolution, zero padding c per side)
    y[n] = |S[n]| / Z(alpha),   Z(alpha) = sum_m exp(-alpha * |m|)    (Eqs. 3-4, Appendix B)

So the kernel centre ``m = 0`` sits on input frame ``n * s`` (frames are counted from 0 without the padding),
``m > 0`` looks into the past and ``m < 0`` into the future, and ``N_out = floor((T - 1) / s) + 1``.
For a real input the sign convention of ``m`` does not change ``y``: replacing ``m`` by ``-m`` conjugates
``S``.  Decay and frequency are given per output frame (adaptive SBLU) or broadcast (non-adaptive SBLU).

Gain: ``Z`` is the window's DC gain, so a *complex* tone ``x[t] = exp(i * omega * t)`` at the kernel's own
frequency gives exactly ``y = 1`` away from the edges.  The input here is real: a real tone
``cos(omega * t + phi)`` is the sum of two complex tones of amplitude 1/2, the one at ``+omega`` passes
with gain 1 and the image at ``-omega`` with gain ``|W(2 omega)| / Z`` (W the window's spectrum), so
``y`` is 1/2 up to that image leakage (which oscillates at ``2 omega`` and vanishes for long windows,
``alpha -> 0``, away from ``omega`` near 0 or pi).  At ``omega = pi`` the two images coincide and
``y = |cos(phi)|`` exactly.
"""

import functools
import math

import numpy as np
import torch
from scipy import signal as scipy_signal
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = [
    "SBLU",
    "ZeroPhaseHighPass",
    "design_highpass_taps",
    "sblu_conv",
    "sblu_conv_reference",
    "sblu_decay_lower_bound",
    "sblu_normalizer",
    "zero_phase_highpass",
]

# Default scratch memory one chunk of the adaptive convolution may use (all temporaries of one chunk,
# forward or backward). On a 2-core CPU larger chunks measured no faster and much smaller ones pay Python
# overhead (budget sweep in benchmarks/bench_sblu.py); peak extra memory does not grow with batch, channels
# or length.
DEFAULT_MEMORY_BUDGET_BYTES = 16 * 2**20


# ----------------------------------------------------------------------------------------------------------
# Normaliser and bounds
# ----------------------------------------------------------------------------------------------------------


def _check_kernel_size(kernel_size: int) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be a positive odd integer, got {kernel_size!r}.")
    return (kernel_size - 1) // 2


def sblu_normalizer(alpha: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gain of the two-sided exponential window, ``Z(alpha) = sum_{m=-c..c} exp(-alpha |m|)`` (Appendix B).

    Closed form of the geometric sum, written with ``expm1`` so that it stays accurate for small decays::

        Z = 1 + 2 * exp(-alpha) * expm1(-c * alpha) / expm1(-alpha)

    (equivalently ``(cosh(alpha / 2) - exp(-(c + 1/2) alpha)) / sinh(alpha / 2)``). For ``|alpha| < 1e-6`` a
    second-order Taylor expansion is used instead (the limit at 0 is ``K``), so value and gradient are finite
    everywhere. Meant for ``alpha >= 0`` (the SBLU bounds keep ``alpha >= alpha_min > 0``); negative decays
    are evaluated by the same formula until they overflow.

    Args:
        alpha (`torch.Tensor`): decay, any shape, floating point.
        kernel_size (`int`): odd kernel size ``K``.

    Returns:
        `torch.Tensor` of the same shape and dtype as `alpha`.
    """
    c = _check_kernel_size(kernel_size)
    if not torch.is_tensor(alpha) or not alpha.is_floating_point():
        raise ValueError("`alpha` must be a floating point tensor.")
    small = alpha.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(alpha), alpha)
    closed = 1.0 + 2.0 * torch.exp(-safe) * torch.expm1(-c * safe) / torch.expm1(-safe)
    taylor = 1.0 + 2.0 * (c - alpha * (c * (c + 1) / 2) + alpha.square() * (c * (c + 1) * (2 * c + 1) / 12))
    return torch.where(small, taylor, closed)


def sblu_decay_lower_bound(kernel_size: int, attenuation_eps: float) -> float:
    """Stability bound of Sec. III-B: the window edge ``exp(-alpha c)`` must be ``<= eps``, so
    ``alpha >= -ln(eps) / c``."""
    c = _check_kernel_size(kernel_size)
    if not 0.0 < attenuation_eps < 1.0:
        raise ValueError(f"`attenuation_eps` must lie in (0, 1), got {attenuation_eps!r}.")
    if c == 0:
        raise ValueError("`kernel_size` must be at least 3 for the SBLU decay bound.")
    return -math.log(attenuation_eps) / c


# ----------------------------------------------------------------------------------------------------------
# Direct reference (tests only)
# ----------------------------------------------------------------------------------------------------------


def sblu_conv_reference(
    x: torch.Tensor, alpha: torch.Tensor, omega: torch.Tensor, kernel_size: int, stride: int = 1
) -> torch.Tensor:
    """Direct, obviously-correct SBLU convolution for tests: builds the complex kernel of every output position
    explicitly (memory ``B x C x N_out x K``), gathers ``x[n * s - m]`` and differentiates by plain autograd.

    Same arguments and result as [`sblu_conv`]; ``Z`` is the direct window sum (not the closed form).
    """
    c = _check_kernel_size(kernel_size)
    x, alpha, omega, num_out = _prepare_params(x, alpha, omega, kernel_size, stride)
    m = torch.arange(-c, c + 1, device=x.device, dtype=x.dtype)
    x_padded = F.pad(x, (c, c))
    # input frame n * s - m lives at padded index n * s - m + c
    index = torch.arange(num_out, device=x.device)[:, None] * stride - torch.arange(-c, c + 1, device=x.device) + c
    windows = x_padded[..., index]  # (B, C, N, K): x[n * s - m]
    window = torch.exp(-alpha[..., None] * m.abs())
    kernel = torch.polar(window, omega[..., None] * m)  # h[m], complex (B, C, N, K)
    response = (kernel * windows.to(kernel.dtype)).sum(-1)
    return response.abs() / window.sum(-1)


# ----------------------------------------------------------------------------------------------------------
# Memory-bounded adaptive convolution with the Appendix C backward
# ----------------------------------------------------------------------------------------------------------


def _prepare_params(x, alpha, omega, kernel_size, stride):
    """Validates the inputs and broadcasts decay / frequency to the output grid ``(B, C, N_out)``."""
    _check_kernel_size(kernel_size)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"`stride` must be a positive integer, got {stride!r}.")
    if not torch.is_tensor(x) or x.dim() != 3 or not x.is_floating_point():
        raise ValueError(
            f"`x` must be a real floating point tensor of shape (batch, channels, time), got {_describe(x)}."
        )
    batch, channels, length = x.shape
    if length < 1:
        raise ValueError("`x` must have at least one time frame.")
    num_out = (length - 1) // stride + 1
    params = []
    for name, p in (("alpha", alpha), ("omega", omega)):
        if not torch.is_tensor(p) or not p.is_floating_point():
            raise ValueError(f"`{name}` must be a floating point tensor, got {_describe(p)}.")
        if p.dim() == 1:  # (C,): one value per channel (non-adaptive SBLU)
            p = p[None, :, None]
        try:
            p = p.expand(batch, channels, num_out)
        except RuntimeError:
            raise ValueError(
                f"`{name}` of shape {tuple(p.shape)} does not broadcast to the output grid (batch, channels, "
                f"frames) = {(batch, channels, num_out)}; pass (C,), (1, C, 1) or (B, C, N_out) with "
                f"N_out = floor((T - 1) / stride) + 1."
            ) from None
        params.append(p)
    return x, params[0], params[1], num_out


def _describe(t):
    if torch.is_tensor(t):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return repr(type(t).__name__)


def _chunk_plan(rows: int, num_out: int, bytes_per_position: int, budget: int):
    """Rows (batch x channels) and output frames per chunk so that the chunk's temporaries fit the budget."""
    positions = max(1, budget // bytes_per_position)
    frames = min(num_out, positions)
    return max(1, min(rows, positions // frames)), frames


def _chunk_segment(x_rows, n0, n1, c, kernel_size, stride):
    """Zero-padded input segment covering the windows of output frames ``n0 .. n1 - 1``: segment index
    ``(n - n0) * s + k`` holds input frame ``n * s + k - c``.

    Returns the segment, and the slice ``lo:hi`` of unpadded input frames it covers with its offset inside it.
    """
    length = x_rows.shape[-1]
    start, stop = n0 * stride - c, (n1 - 1) * stride + kernel_size - c  # unpadded coordinates
    lo, hi = max(start, 0), min(stop, length)
    segment = F.pad(x_rows[:, lo:hi], (lo - start, stop - hi))
    return segment, lo, hi, lo - start


def _normalizer_and_derivative(alpha, kernel_size):
    """``Z(alpha)`` and ``dZ/dalpha`` of the closed form used in the forward (autograd of [`sblu_normalizer`])."""
    if kernel_size == 1:
        return torch.ones_like(alpha), torch.zeros_like(alpha)
    with torch.enable_grad():
        leaf = alpha.detach().requires_grad_(True)
        normalizer = sblu_normalizer(leaf, kernel_size)
        (derivative,) = torch.autograd.grad(normalizer, leaf, torch.ones_like(normalizer))
    return normalizer.detach(), derivative


def _magnitude_gradients(response, p1, p2, alpha, grad_out, kernel_size, need):
    """Chain rule shared by both chunk kernels (Appendix C, Eqs. C.9-C.10), from ``S`` and the two base
    convolutions ``P1 = sum |m| h[m] x[ns-m]`` and ``P2 = sum m h[m] x[ns-m]``::

        dS/dalpha = -P1,  dS/domega = i P2,  d|S| = Re(conj(u) dS) with u = S / |S|,
        dL/dalpha = -g Re(conj(u) P1) - g |S| Z'(alpha) / Z,   dL/domega = -g Im(conj(u) P2),  g = dL/dy / Z.

    Returns ``g conj(u)`` (for the input gradient) and the decay / frequency gradients.
    """
    magnitude = response.abs()
    # u = S / |S|; where S == 0 exactly this gives u = 0, a valid subgradient of |S| (no NaN).
    unit_conj = response.conj() / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny)
    normalizer, derivative = _normalizer_and_derivative(alpha, kernel_size)
    grad_scaled = grad_out / normalizer
    weighted = grad_scaled * unit_conj
    grad_alpha = -(weighted * p1).real - grad_scaled * magnitude * derivative / normalizer if need[1] else None
    grad_omega = -(weighted * p2).imag if need[2] else None
    return weighted, grad_alpha, grad_omega


# --- recursive chunk kernel (default) ---------------------------------------------------------------------
#
# For real x the kernel folds into two polynomials in z = exp(-alpha + i omega) (the ZOH state transition of
# Eq. 1 / A.4): S[n] = A(z) + conj(F(z)) with A = sum_{m=0..c} z^m x[ns-m] (past half) and
# F = sum_{m=1..c} z^m x[ns+m] (future half). Horner's scheme runs that state recursion across the window for
# all windows of a chunk at once: the Python loop is over the c lags, every step one tensor op over the whole
# chunk; no kernel is ever materialised, and no sine / cosine is evaluated beyond one complex z per output.


def _polyphase_taps(segment, stride, num_out):
    """Returns ``tap(j) = segment[:, n * s + j]`` for ``n < num_out`` as a view contiguous along ``n`` (the segment
    is rearranged once into ``s`` polyphase rows)."""
    rows, length = segment.shape
    cols = -(-length // stride)
    poly = F.pad(segment, (0, cols * stride - length)).view(rows, cols, stride).transpose(1, 2).contiguous()

    def tap(j):
        return poly[:, j % stride, j // stride : j // stride + num_out]

    return tap


def _recursive_polynomials(tap, z, c, weighted):
    """Horner evaluation of ``A(z)``, ``F(z)`` and, if `weighted`, of ``sum m z^m x[ns-m]``, ``sum m z^m x[ns+m]``."""
    past = tap(0).to(z.dtype)  # m = c: x[ns - c]
    future = tap(2 * c).to(z.dtype)  # m = c: x[ns + c]
    past_w, future_w = (past * c, future * c) if weighted else (None, None)
    for m in range(c - 1, 0, -1):
        a_m, f_m = tap(c - m), tap(c + m)
        past.mul_(z).add_(a_m)
        future.mul_(z).add_(f_m)
        if weighted:
            past_w.mul_(z).add_(a_m, alpha=m)
            future_w.mul_(z).add_(f_m, alpha=m)
    if c == 0:  # K = 1: S = x[ns]
        return past, torch.zeros_like(future), torch.zeros_like(past), torch.zeros_like(future)
    past.mul_(z).add_(tap(c))  # m = 0 belongs to the past half only
    future.mul_(z)
    if weighted:
        past_w.mul_(z)
        future_w.mul_(z)
    return past, future, past_w, future_w


def _recursive_forward(segment, alpha, omega, c, kernel_size, stride):
    tap = _polyphase_taps(segment, stride, alpha.shape[-1])
    z = torch.polar(torch.exp(-alpha), omega)
    past, future, _, _ = _recursive_polynomials(tap, z, c, weighted=False)
    return torch.abs(past + future.conj())


def _recursive_backward(segment, alpha, omega, grad_out, c, kernel_size, stride, need):
    rows, length = segment.shape
    num_out = alpha.shape[-1]
    tap = _polyphase_taps(segment, stride, num_out)
    z = torch.polar(torch.exp(-alpha), omega)
    past, future, past_w, future_w = _recursive_polynomials(tap, z, c, weighted=need[1] or need[2])
    response = past + future.conj()
    del past, future
    # The two shared base convolutions of Appendix C (C.11-C.12): P1 = sum |m| h x, P2 = sum m h x.
    p1 = past_w + future_w.conj() if need[1] else None
    p2 = past_w - future_w.conj() if need[2] else None
    del past_w, future_w
    weighted, grad_alpha, grad_omega = _magnitude_gradients(response, p1, p2, alpha, grad_out, kernel_size, need)
    grad_segment = None
    if need[0]:
        # dL/dx[ns - m] = Re(g conj(u) z^m) and dL/dx[ns + m] = Re(g conj(u) conj(z)^m) = Re(g u z^m): the
        # transposed convolution, accumulated lag by lag into the polyphase layout of the segment.
        cols = -(-length // stride)
        grad_poly = segment.new_zeros(rows, stride, cols)

        def accumulate(j, value):
            grad_poly[:, j % stride, j // stride : j // stride + num_out] += value

        toward_past = weighted.clone()
        toward_future = weighted.conj_physical_()  # g u, in the storage of g conj(u) (not needed any more)
        accumulate(c, toward_past.real)
        for m in range(1, c + 1):
            toward_past.mul_(z)
            toward_future.mul_(z)
            accumulate(c - m, toward_past.real)
            accumulate(c + m, toward_future.real)
        grad_segment = grad_poly.transpose(1, 2).reshape(rows, cols * stride)[:, :length]
    return grad_segment, grad_alpha, grad_omega


# --- unfold chunk kernel (alternative: kernel generated on the fly for every lag) --------------------------


def _folded_windows(segment, c, kernel_size, stride):
    """Windows folded around the kernel centre, ordered by ``j = 0 .. c`` with lag ``m_j = c - j``.

    ``even = x[ns - m] + x[ns + m]`` and ``odd = x[ns - m] - x[ns + m]``: for real input the complex kernel
    splits into ``cos`` on the even part and ``sin`` on the odd part, which halves the kernel work.
    """
    windows = segment.unfold(-1, kernel_size, stride)  # (R, N, K): x[ns - c + k]
    past = windows[..., : c + 1]  # k = j      -> x[ns - m_j]
    future = windows[..., c:].flip(-1)  # k = K-1-j  -> x[ns + m_j]
    return past + future, past - future


def _kernel_terms(alpha, omega, c):
    """Lags ``m_j = c - j`` and the windowed cosine / sine of every folded lag, generated for one chunk. The
    centre lag is weighted by 1/2 because the even part counts ``x[ns]`` twice."""
    lags = torch.arange(c, -1, -1, device=alpha.device, dtype=alpha.dtype)
    window = torch.exp(alpha[..., None] * -lags)
    window[..., -1] = 0.5
    phase = omega[..., None] * lags
    return lags, window * torch.cos(phase), window * torch.sin(phase)


def _unfold_forward(segment, alpha, omega, c, kernel_size, stride):
    even, odd = _folded_windows(segment, c, kernel_size, stride)
    _, cos_term, sin_term = _kernel_terms(alpha, omega, c)
    return torch.hypot(torch.linalg.vecdot(cos_term, even), torch.linalg.vecdot(sin_term, odd))


def _unfold_backward(segment, alpha, omega, grad_out, c, kernel_size, stride, need):
    # Folded around the centre, Re S / Re P1 share the products cos*even, Im S / Im P1 the products sin*odd,
    # Re P2 / Im P2 the products cos*odd / sin*even (the coupling of Appendix C, Eqs. C.7-C.8).
    even, odd = _folded_windows(segment, c, kernel_size, stride)
    lags, cos_term, sin_term = _kernel_terms(alpha, omega, c)
    ones_lags = torch.stack([torch.ones_like(lags), lags], dim=-1)  # plain and |m|-weighted sums
    re_s, re_p1 = (cos_term * even).matmul(ones_lags).unbind(-1)
    im_s, im_p1 = (sin_term * odd).matmul(ones_lags).unbind(-1)
    p2 = torch.complex((cos_term * odd).matmul(lags), (sin_term * even).matmul(lags)) if need[2] else None
    del even, odd
    response, p1 = torch.complex(re_s, im_s), torch.complex(re_p1, im_p1)
    weighted, grad_alpha, grad_omega = _magnitude_gradients(response, p1, p2, alpha, grad_out, kernel_size, need)
    grad_segment = None
    if need[0]:
        # dL/dx[ns -+ m] = Re(g conj(u) exp(-alpha m) exp(+-i omega m))
        cos_term.mul_(weighted.real[..., None])
        sin_term.mul_(weighted.imag[..., None])
        toward_past = cos_term - sin_term
        toward_future = cos_term.add_(sin_term)
        grad_windows = torch.cat(
            [toward_past[..., :c], toward_past[..., c:] + toward_future[..., c:], toward_future[..., :c].flip(-1)],
            dim=-1,
        )  # (R, N, K) in window order k = 0 .. K-1 (the centre weight 1/2 is counted twice)
        grad_segment = F.fold(
            grad_windows.transpose(1, 2),
            output_size=(1, segment.shape[-1]),
            kernel_size=(1, kernel_size),
            stride=(1, stride),
        ).view(segment.shape[0], -1)
    return grad_segment, grad_alpha, grad_omega


_CHUNK_KERNELS = {
    "recursive": (_recursive_forward, _recursive_backward),
    "unfold": (_unfold_forward, _unfold_backward),
}


def _bytes_per_position(method, kernel_size, stride, itemsize):
    """Scratch bytes per output position of one chunk (an upper bound read off the chunk kernels)."""
    if method == "recursive":  # about 14 complex (R, N) temporaries plus the polyphase segment and its gradient
        return itemsize * (32 + 4 * stride)
    return itemsize * kernel_size * 6  # about 12 (R, N, c + 1) real temporaries


class SBLUConvFunction(torch.autograd.Function):
    """Adaptive SBLU convolution, chunked over (rows, output frames), with a custom backward that recomputes
    each chunk and reuses the two shared base convolutions of Appendix C for the decay and frequency gradients.

    ``apply(x, alpha, omega, kernel_size, stride, memory_budget, method)`` with ``x (B, C, T)`` and
    ``alpha``, ``omega`` of shape ``(B, C, N_out)`` (expanded views are fine); `method` is `"recursive"` or
    `"unfold"`. Only ``x``, ``alpha`` and ``omega`` are saved for backward.
    """

    @staticmethod
    def forward(ctx, x, alpha, omega, kernel_size, stride, memory_budget, method):
        forward_chunk = _CHUNK_KERNELS[method][0]
        c = (kernel_size - 1) // 2
        batch, channels, length = x.shape
        num_out = alpha.shape[-1]
        rows = batch * channels
        x_rows = x.reshape(rows, length)
        alpha_rows, omega_rows = alpha.reshape(rows, num_out), omega.reshape(rows, num_out)
        per_position = _bytes_per_position(method, kernel_size, stride, x.element_size())
        row_chunk, frame_chunk = _chunk_plan(rows, num_out, per_position, memory_budget)
        out = x.new_empty(rows, num_out)
        for r0 in range(0, rows, row_chunk):
            r1 = min(rows, r0 + row_chunk)
            for n0 in range(0, num_out, frame_chunk):
                n1 = min(num_out, n0 + frame_chunk)
                segment, *_ = _chunk_segment(x_rows[r0:r1], n0, n1, c, kernel_size, stride)
                out[r0:r1, n0:n1] = forward_chunk(
                    segment, alpha_rows[r0:r1, n0:n1], omega_rows[r0:r1, n0:n1], c, kernel_size, stride
                )
        out = out / sblu_normalizer(alpha_rows, kernel_size)
        ctx.save_for_backward(x, alpha, omega)
        ctx.kernel_size, ctx.stride, ctx.memory_budget, ctx.method = kernel_size, stride, memory_budget, method
        return out.view(batch, channels, num_out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, alpha, omega = ctx.saved_tensors
        kernel_size, stride, method = ctx.kernel_size, ctx.stride, ctx.method
        backward_chunk = _CHUNK_KERNELS[method][1]
        need = ctx.needs_input_grad[:3]
        c = (kernel_size - 1) // 2
        batch, channels, length = x.shape
        num_out = alpha.shape[-1]
        rows = batch * channels
        x_rows = x.reshape(rows, length)
        alpha_rows, omega_rows = alpha.reshape(rows, num_out), omega.reshape(rows, num_out)
        grad_rows = grad_out.reshape(rows, num_out).to(x.dtype)
        per_position = _bytes_per_position(method, kernel_size, stride, x.element_size())
        row_chunk, frame_chunk = _chunk_plan(rows, num_out, per_position, ctx.memory_budget)
        grad_x = torch.zeros_like(x_rows) if need[0] else None
        grad_alpha = x.new_empty(rows, num_out) if need[1] else None
        grad_omega = x.new_empty(rows, num_out) if need[2] else None
        for r0 in range(0, rows, row_chunk):
            r1 = min(rows, r0 + row_chunk)
            for n0 in range(0, num_out, frame_chunk):
                n1 = min(num_out, n0 + frame_chunk)
                segment, lo, hi, offset = _chunk_segment(x_rows[r0:r1], n0, n1, c, kernel_size, stride)
                g_segment, g_alpha, g_omega = backward_chunk(
                    segment,
                    alpha_rows[r0:r1, n0:n1],
                    omega_rows[r0:r1, n0:n1],
                    grad_rows[r0:r1, n0:n1],
                    c,
                    kernel_size,
                    stride,
                    need,
                )
                if need[0]:
                    grad_x[r0:r1, lo:hi] += g_segment[:, offset : offset + hi - lo]
                if need[1]:
                    grad_alpha[r0:r1, n0:n1] = g_alpha
                if need[2]:
                    grad_omega[r0:r1, n0:n1] = g_omega
        shape = (batch, channels, num_out)
        return (
            grad_x.view_as(x) if need[0] else None,
            grad_alpha.view(shape) if need[1] else None,
            grad_omega.view(shape) if need[2] else None,
            None,
            None,
            None,
            None,
        )


class _Magnitude(torch.autograd.Function):
    """``hypot(re, im)`` whose gradient at 0 is the subgradient 0 instead of NaN."""

    @staticmethod
    def forward(ctx, real, imag):
        magnitude = torch.hypot(real, imag)
        ctx.save_for_backward(real, imag, magnitude)
        return magnitude

    @staticmethod
    def backward(ctx, grad):
        real, imag, magnitude = ctx.saved_tensors
        scale = grad / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny)
        return scale * real, scale * imag


def _sblu_conv_fixed(x, alpha, omega, kernel_size, stride):
    """SBLU with one kernel per channel (non-adaptive): a depthwise ``conv1d`` with real and imaginary kernels.

    ``alpha`` and ``omega`` have shape ``(C,)``; autograd differentiates through the small ``(C, K)`` kernel.
    """
    c = (kernel_size - 1) // 2
    batch, channels, _ = x.shape
    # conv1d correlates: out[n] = sum_k w[k] x[ns + k - c], so w[k] = h[m = c - k].
    m = torch.arange(c, -c - 1, -1, device=x.device, dtype=x.dtype)
    window = torch.exp(-alpha[:, None] * m.abs())
    phase = omega[:, None] * m
    weight = torch.stack([window * torch.cos(phase), window * torch.sin(phase)], dim=1)  # (C, 2, K)
    out = F.conv1d(x, weight.reshape(2 * channels, 1, kernel_size), stride=stride, padding=c, groups=channels)
    out = out.view(batch, channels, 2, -1)
    return _Magnitude.apply(out[:, :, 0], out[:, :, 1]) / sblu_normalizer(alpha, kernel_size)[:, None]


def sblu_conv(
    x: torch.Tensor,
    alpha: torch.Tensor,
    omega: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET_BYTES,
    method: str = "auto",
) -> torch.Tensor:
    """SBLU convolution (Eqs. 2-4): ``y[b, ch, n] = |sum_m h[m] x[b, ch, n*s - m]| / Z(alpha[b, ch, n])`` with
    ``h[m] = exp(-alpha |m|) exp(i omega m)``, ``m = -c .. c``, ``c = (K - 1) / 2``, zero padding ``c`` per side.

    The kernel centre sits on input frame ``n * s`` (see the module docstring for the full convention).

    Args:
        x (`torch.Tensor` of shape `(batch, channels, time)`): real input (the output of SBLU's ``B`` map).
        alpha (`torch.Tensor`): decay. Adaptive: `(batch, channels, N_out)` with
            ``N_out = floor((time - 1) / stride) + 1``. Non-adaptive: `(channels,)`, or any shape that broadcasts
            to `(batch, channels, N_out)` such as `(1, channels, 1)`.
        omega (`torch.Tensor`): frequency in radians per input frame, same shapes as `alpha`.
        kernel_size (`int`): odd kernel size ``K``.
        stride (`int`): output stride ``s``.
        memory_budget (`int`, *optional*): bytes of scratch memory one chunk may use (chunked methods). Peak
            extra memory stays near this budget whatever the batch, channel count or length.
        method (`str`, *optional*, defaults to `"auto"`):
            - `"recursive"`: Horner / state recursion over the lags, chunked, custom backward (fastest on CPU);
            - `"unfold"`: windows via ``unfold`` times kernels generated on the fly per lag, chunked, custom
              backward;
            - `"conv"`: depthwise ``conv1d`` with one ``(C, K)`` kernel, plain autograd; only for decay and
              frequency constant over batch and time;
            - `"auto"`: `"conv"` when it applies, else `"recursive"`.

    Returns:
        `torch.Tensor` of shape `(batch, channels, N_out)`. Half-precision inputs and autocast are computed in
        float32 and return float32; float64 stays float64.
    """
    if method not in ("auto", "recursive", "unfold", "conv"):
        raise ValueError(f"`method` must be 'auto', 'recursive', 'unfold' or 'conv', got {method!r}.")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"`memory_budget` must be a positive number of bytes, got {memory_budget!r}.")
    x_checked, alpha_full, omega_full, _ = _prepare_params(x, alpha, omega, kernel_size, stride)
    # The kernel is a long sum of oscillating terms: compute it in float32 at least, also under autocast.
    dtype = torch.float64 if torch.float64 in (x.dtype, alpha.dtype, omega.dtype) else torch.float32
    fixed = all(p.dim() == 1 or (p.dim() == 3 and p.shape[0] == 1 and p.shape[2] == 1) for p in (alpha, omega))
    if method == "conv" and not fixed:
        raise ValueError("method='conv' needs `alpha` and `omega` of shape (C,) or (1, C, 1).")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x_checked = x_checked.to(dtype)
        if fixed and method in ("auto", "conv"):
            channels = x_checked.shape[1]
            a = alpha.reshape(-1).to(dtype).expand(channels)
            w = omega.reshape(-1).to(dtype).expand(channels)
            return _sblu_conv_fixed(x_checked, a, w, kernel_size, stride)
        return SBLUConvFunction.apply(
            x_checked,
            alpha_full.to(dtype),
            omega_full.to(dtype),
            kernel_size,
            stride,
            memory_budget,
            "recursive" if method == "auto" else method,
        )


# ----------------------------------------------------------------------------------------------------------
# Zero-phase high-pass (Sec. III-C)
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _highpass_taps(cutoff: float, num_taps: int) -> np.ndarray:
    taps = scipy_signal.firwin(num_taps, cutoff, window="hamming", pass_zero=False)
    taps.setflags(write=False)
    return taps


def design_highpass_taps(cutoff: float, num_taps: int = 63) -> np.ndarray:
    """Hamming-window FIR high-pass, ``scipy.signal.firwin(num_taps, cutoff, window="hamming", pass_zero=False)``.

    Args:
        cutoff (`float`): cutoff normalised to the Nyquist frequency, in (0, 1). AaPE uses the post-patching
            Nyquist, ``1 / p_t`` for a patch of ``p_t`` frames.
        num_taps (`int`): odd number of taps (a high-pass FIR needs an odd length).
    """
    if not 0.0 < float(cutoff) < 1.0:
        raise ValueError(f"`cutoff` must lie in (0, 1) (normalised to Nyquist), got {cutoff!r}.")
    if isinstance(num_taps, bool) or not isinstance(num_taps, int) or num_taps < 3 or num_taps % 2 == 0:
        raise ValueError(f"`num_taps` must be an odd integer >= 3 for a high-pass FIR, got {num_taps!r}.")
    return np.array(_highpass_taps(float(cutoff), num_taps))


def _extend(x: torch.Tensor, pad: int, padtype: str) -> torch.Tensor:
    """Extends the last axis by `pad` samples per side, like scipy's ``odd_ext`` / ``even_ext`` / ``const_ext``,
    or with zeros. Reflections are repeated when `pad` exceeds the signal length."""
    if padtype == "zeros":
        return F.pad(x, (pad, pad))
    if padtype == "constant" or x.shape[-1] == 1:
        return torch.cat([x[..., :1].expand(*x.shape[:-1], pad), x, x[..., -1:].expand(*x.shape[:-1], pad)], -1)
    left = right = 0
    while left < pad:
        step = min(pad - left, x.shape[-1] - 1)
        head, tail = x[..., 1 : step + 1].flip(-1), x[..., -step - 1 : -1].flip(-1)
        if padtype == "odd":
            head, tail = 2 * x[..., :1] - head, 2 * x[..., -1:] - tail
        x = torch.cat([head, x, tail], -1)
        left += step
        right += step
    return x


def zero_phase_highpass(
    x: torch.Tensor, cutoff: float, num_taps: int = 63, padtype: str = "odd", taps: torch.Tensor | None = None
) -> torch.Tensor:
    """Zero-phase high-pass along the last (time) axis: forward-backward filtering with a Hamming-window FIR
    (Sec. III-C), as one differentiable, batched ``conv1d`` on any device.

    Forward then backward filtering with a symmetric FIR ``h`` equals one correlation with ``h * h`` (magnitude
    ``|H|^2``, zero phase). The edges are extended by ``num_taps - 1`` samples like ``scipy.signal.filtfilt``'s
    ``padtype`` (default ``"odd"``, point-symmetric about the edge value, which keeps value and slope continuous
    and so adds the least edge transient to a log-mel); with at least ``2 (num_taps - 1)`` padding scipy's
    initial conditions do not reach the kept samples, so the result equals
    ``scipy.signal.filtfilt(h, 1, x, padtype=padtype, padlen=P)`` for any such ``P`` (``P`` < length).

    Args:
        x (`torch.Tensor` of shape `(..., time)`): real input.
        cutoff (`float`): cutoff normalised to Nyquist (``1 / p_t`` in AaPE).
        num_taps (`int`): odd FIR length (63 in AaPE).
        padtype (`str`): `"odd"`, `"even"`, `"constant"` (scipy's names) or `"zeros"`.
        taps (`torch.Tensor`, *optional*): precomputed taps (as held by [`ZeroPhaseHighPass`]).
    """
    if padtype not in ("odd", "even", "constant", "zeros"):
        raise ValueError(f"`padtype` must be 'odd', 'even', 'constant' or 'zeros', got {padtype!r}.")
    if not torch.is_tensor(x) or x.dim() < 1 or not x.is_floating_point() or x.shape[-1] < 1:
        raise ValueError(f"`x` must be a real floating point tensor with a time axis, got {_describe(x)}.")
    if taps is None:
        taps = torch.as_tensor(design_highpass_taps(cutoff, num_taps))
    taps = taps.to(device=x.device, dtype=x.dtype)
    num_taps = taps.shape[-1]
    combined = F.conv1d(taps.view(1, 1, -1), taps.view(1, 1, -1), padding=num_taps - 1).view(1, 1, -1)
    shape = x.shape
    extended = _extend(x.reshape(1, -1, shape[-1]), num_taps - 1, padtype)
    # Every signal as a channel of one depthwise conv: several times faster on CPU than a batch of 1-channel ones.
    rows = extended.shape[1]
    return F.conv1d(extended, combined.expand(rows, 1, -1), groups=rows).view(shape)


class ZeroPhaseHighPass(nn.Module):
    """[`zero_phase_highpass`] as a module; the taps are a non-persistent buffer (rebuilt, never saved).

    Args:
        cutoff (`float`): cutoff normalised to Nyquist (``1 / p_t``).
        num_taps (`int`, *optional*, defaults to 63): odd FIR length.
        padtype (`str`, *optional*, defaults to `"odd"`): edge extension, see [`zero_phase_highpass`].
    """

    def __init__(self, cutoff: float, num_taps: int = 63, padtype: str = "odd"):
        super().__init__()
        self.cutoff, self.num_taps, self.padtype = float(cutoff), num_taps, padtype
        self.register_buffer(
            "taps", torch.tensor(design_highpass_taps(cutoff, num_taps), dtype=torch.float32), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return zero_phase_highpass(x, self.cutoff, self.num_taps, self.padtype, taps=self.taps)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_taps={self.num_taps}, padtype={self.padtype!r}"


# ----------------------------------------------------------------------------------------------------------
# The SBLU block of AaPE (Sec. III-C)
# ----------------------------------------------------------------------------------------------------------


def _init_copy_(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """In-place copy that, like `transformers.initialization`, leaves parameters loaded from a checkpoint alone."""
    if getattr(parameter, "_is_hf_initialized", False):
        return
    with torch.no_grad():
        parameter.copy_(value)


class SBLU(nn.Module):
    r"""Structured Bilateral Laplace Unit block of AaPE (aape.txt Sec. III-C, order as in NOTES.md):

    log-mel ``(B, F, T)`` -> zero-phase high-pass along time (63-tap Hamming FIR, cutoff at the post-patching
    Nyquist ``1 / p_t``, forward-backward) -> ``B``: grouped 1x1 ``Conv1d`` (``N_f`` groups, ``F -> N_f H``) ->
    SBLU convolution ([`sblu_conv`], stride ``s``, padding ``c``, magnitude / ``Z``) -> ``C``: grouped 1x1
    ``Conv1d`` (``N_f`` groups, ``N_f H -> N_f D_o``) -> ``GroupNorm(N_f)`` -> time-only patchify (depthwise
    ``Conv1d``, kernel = stride = ``p_t / s``) -> tokens ``(B, N_f N_t, D_o)``.

    Channel ``f * H + h`` is hidden channel ``h`` of frequency patch ``f`` (the grouped maps keep frequency
    patches independent). Tokens are ordered like a ``Conv2d`` patch embedding flattened from ``(B, D, N_f, N_t)``:
    token ``f * N_t + t`` is frequency patch ``f`` (low to high mel) at time patch ``t``, so they line up one to
    one with standard ViT patch tokens for fusion. Input frames beyond the last whole time patch are dropped, as
    a ``Conv2d`` patch embedding with kernel = stride does.

    Adaptive mode (``adaptive=True``): decay and frequency come from outside (the Lambda encoder), already bounded
    (see [`~SBLU.bound_parameters`] / [`~SBLU.parameters_from_tokens`]), at time-patch resolution
    ``(B, N_f H, N_t)``; each value is repeated ``p_t / s`` times to the SBLU output rate, which equals repeating
    it ``p_t`` times at the input frame rate and keeping every ``s``-th frame (Sec. III-C). Non-adaptive mode owns
    raw parameters ``raw_decay``, ``raw_frequency`` of shape ``(N_f H,)``, fixed across time, mapped through the
    same bounds.

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128): mel bins ``F`` of the input.
        patch_size (`int` or `(int, int)`, *optional*, defaults to 16): ViT patch size ``(p_f, p_t)``.
        hidden_channels (`int`, *optional*, defaults to 16): SBLU channels ``H`` per frequency patch (inferred:
            the 16 decay / frequency pairs per patch of Fig. 4).
        kernel_size (`int`, *optional*, defaults to 63): odd SBLU kernel size ``K`` (inferred from the Table VII
            FLOPs; 31 and 127 in the ablation).
        stride (`int`, *optional*, defaults to 4): SBLU stride ``s``, must divide ``p_t`` (inferred, Table VII).
        output_dim (`int`, *optional*, defaults to 192): token width ``D_o`` of every frequency patch (inferred,
            NOTES.md "about 192").
        attenuation_eps (`float`, *optional*, defaults to 0.01): window edge attenuation threshold ``eps`` of the
            stability bound ``exp(-alpha c) <= eps``, i.e. ``alpha >= -ln(eps) / c`` (value lost in the paper;
            inferred). 0.01 puts the window edge at -40 dB, about the sidelobe level of the Hamming window used
            for the high-pass, and keeps the truncated window's spectrum positive at every frequency for all the
            kernel sizes of Table VII (the edge ripple makes it cross zero, which flips the sign of the frequency
            gradient, once eps exceeds about 0.088 / 0.051 / 0.029 for K = 31 / 63 / 127); its bound
            ``alpha_min = 0.149`` for K = 63 still allows a main lobe (half width about alpha) narrower than the
            lowest band frequency ``pi / p_t = 0.196``.
        highpass_taps (`int` or `None`, *optional*, defaults to 63): FIR length of the zero-phase high-pass;
            `None` disables the filter (ablation only).
        adaptive (`bool`, *optional*, defaults to `True`): adaptive (parameters from outside) or non-adaptive
            (own learnable parameters) SBLU.
        highpass_padtype (`str`, *optional*, defaults to `"odd"`): edge extension of the high-pass, see
            [`zero_phase_highpass`] (inferred; scipy's `filtfilt` default).
        group_norm_eps (`float`, *optional*, defaults to 1e-5): epsilon of the GroupNorm.
        memory_budget (`int`, *optional*): scratch bytes per chunk of the adaptive SBLU convolution.

    Maps ``B`` and ``C`` have no bias (they are the SSM's ``B`` and ``C`` matrices; a bias in ``B`` would put the
    DC removed by the high-pass back); the patchify convolution has one, like a patch embedding (inferred).
    """

    def __init__(
        self,
        num_mel_bins: int = 128,
        patch_size: int | tuple[int, int] = 16,
        hidden_channels: int = 16,
        kernel_size: int = 63,
        stride: int = 4,
        output_dim: int = 192,
        attenuation_eps: float = 0.01,
        highpass_taps: int | None = 63,
        adaptive: bool = True,
        highpass_padtype: str = "odd",
        group_norm_eps: float = 1e-5,
        memory_budget: int = DEFAULT_MEMORY_BUDGET_BYTES,
    ):
        super().__init__()
        patch_f, patch_t = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        for name, value in (
            ("num_mel_bins", num_mel_bins),
            ("patch_size", patch_f),
            ("patch_size", patch_t),
            ("hidden_channels", hidden_channels),
            ("stride", stride),
            ("output_dim", output_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if num_mel_bins % patch_f:
            raise ValueError(
                f"`num_mel_bins` ({num_mel_bins}) must be divisible by the frequency patch size {patch_f}."
            )
        if patch_t < 2 or patch_t % stride:
            raise ValueError(f"The time patch size ({patch_t}) must be >= 2 and divisible by `stride` ({stride}).")
        self.num_mel_bins = num_mel_bins
        self.patch_size = (patch_f, patch_t)
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.output_dim = output_dim
        self.adaptive = adaptive
        self.memory_budget = memory_budget
        self.num_frequency_patches = num_mel_bins // patch_f
        self.num_channels = self.num_frequency_patches * hidden_channels
        self.frames_per_patch = patch_t // stride  # SBLU output frames per time patch
        # Sec. III-B bounds: alpha >= -ln(eps) / c (stability), omega in [pi / p_t, pi] (band focus).
        self.decay_min = sblu_decay_lower_bound(kernel_size, attenuation_eps)
        self.attenuation_eps = attenuation_eps
        self.frequency_low, self.frequency_high = math.pi / patch_t, math.pi

        self.highpass = (
            ZeroPhaseHighPass(1.0 / patch_t, highpass_taps, highpass_padtype)
            if highpass_taps is not None
            else nn.Identity()
        )
        groups = self.num_frequency_patches
        self.input_map = nn.Conv1d(num_mel_bins, self.num_channels, 1, groups=groups, bias=False)
        self.output_map = nn.Conv1d(self.num_channels, groups * output_dim, 1, groups=groups, bias=False)
        self.norm = nn.GroupNorm(groups, groups * output_dim, eps=group_norm_eps)
        self.patchify = nn.Conv1d(
            groups * output_dim,
            groups * output_dim,
            self.frames_per_patch,
            stride=self.frames_per_patch,
            groups=groups * output_dim,
        )
        if adaptive:
            self.raw_decay = self.raw_frequency = None
        else:
            self.raw_decay = nn.Parameter(torch.empty(self.num_channels))
            self.raw_frequency = nn.Parameter(torch.empty(self.num_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises every parameter (call it from the model's ``_init_weights``; it leaves parameters flagged
        ``_is_hf_initialized`` alone).

        - ``B``, ``C``: PyTorch's ``Conv1d`` default (Kaiming-uniform, fan-in ``p_f`` and ``H``).
        - GroupNorm: weight 1, bias 0.
        - Patchify: average pooling over the ``p_t / s`` frames of a patch (weight ``s / p_t``, bias 0), so the
          initial tokens are patch means of the normalised features (inferred).
        - Non-adaptive decay / frequency (inferred): ``alpha = 2 alpha_min`` (raw ``softplus^-1(alpha_min)``)
          and the ``H`` frequencies of every frequency patch spread over the band at the centres of ``H`` equal
          bins, ``omega_h = omega_low + (omega_high - omega_low) (h + 1/2) / H``.
        """
        self.input_map.reset_parameters()
        self.output_map.reset_parameters()
        self.norm.reset_parameters()
        nn.init.constant_(self.patchify.weight, 1.0 / self.frames_per_patch)
        nn.init.zeros_(self.patchify.bias)
        if not self.adaptive:
            raw_decay = math.log(math.expm1(self.decay_min))
            centres = (torch.arange(self.hidden_channels, dtype=torch.float64) + 0.5) / self.hidden_channels
            raw_frequency = torch.logit(centres).repeat(self.num_frequency_patches)
            _init_copy_(self.raw_decay, torch.full_like(self.raw_decay, raw_decay))
            _init_copy_(self.raw_frequency, raw_frequency.to(self.raw_frequency))

    def bound_parameters(
        self, raw_decay: torch.Tensor, raw_frequency: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sec. III-C bounds: ``alpha = softplus(a) + alpha_min`` and
        ``omega = omega_low + (omega_high - omega_low) sigmoid(b)`` with ``omega in [pi / p_t, pi]``."""
        decay = F.softplus(raw_decay) + self.decay_min
        frequency = self.frequency_low + (self.frequency_high - self.frequency_low) * torch.sigmoid(raw_frequency)
        return decay, frequency

    def parameters_from_tokens(self, lambda_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Turns Lambda-encoder outputs into bounded SBLU parameters.

        Args:
            lambda_tokens (`torch.Tensor` of shape `(batch, N_f * N_t, 2 * H)`): one vector per patch token, in
                the token order of this module (``f * N_t + t``); the first ``H`` entries are the raw decays (the
                real part of the complex parameter), the last ``H`` the raw frequencies (the imaginary part).

        Returns:
            `(decay, frequency)`, each of shape `(batch, N_f * H, N_t)` (the frequency-patch axis folded into the
            channel axis), ready for [`~SBLU.forward`].
        """
        hidden = self.hidden_channels
        if lambda_tokens.dim() != 3 or lambda_tokens.shape[-1] != 2 * hidden:
            raise ValueError(
                f"`lambda_tokens` must have shape (batch, N_f * N_t, {2 * hidden}), got {tuple(lambda_tokens.shape)}."
            )
        batch, tokens, _ = lambda_tokens.shape
        if tokens % self.num_frequency_patches:
            raise ValueError(f"Token count {tokens} is not a multiple of N_f = {self.num_frequency_patches}.")
        decay, frequency = self.bound_parameters(lambda_tokens[..., :hidden], lambda_tokens[..., hidden:])

        def to_channels(p):  # (B, N_f * N_t, H) -> (B, N_f * H, N_t)
            p = p.reshape(batch, self.num_frequency_patches, -1, hidden)
            return p.permute(0, 1, 3, 2).reshape(batch, self.num_channels, -1)

        return to_channels(decay), to_channels(frequency)

    def num_time_patches(self, num_frames: int) -> int:
        """Time patches ``N_t = floor(T / p_t)`` for ``T`` input frames."""
        return num_frames // self.patch_size[1]

    def fixed_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounded decay and frequency of the non-adaptive SBLU, each of shape `(N_f * H,)`."""
        if self.adaptive:
            raise ValueError("An adaptive SBLU has no parameters of its own; they come from the Lambda encoder.")
        return self.bound_parameters(self.raw_decay, self.raw_frequency)

    def forward(
        self,
        input_values: torch.Tensor,
        decay: torch.Tensor | None = None,
        frequency: torch.Tensor | None = None,
        visible_patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input_values (`torch.Tensor` of shape `(batch, num_mel_bins, frames)` or `(batch, 1, num_mel_bins,
                frames)`): normalised log-mel, frequency before time (transpose the models' `(batch, frames, mel)`
                layout first).
            decay, frequency (`torch.Tensor` of shape `(batch, N_f * H, N_t)`, *optional*): bounded decay
                ``alpha`` and frequency ``omega`` (radians per frame) per channel and time patch; required in
                adaptive mode, not accepted in non-adaptive mode.
            visible_patches (`torch.BoolTensor` of shape `(batch, N_f, N_t)`, *optional*): masked pre-training.
                The input of every masked patch (`False`) is set to 0 before the high-pass, and the GroupNorm
                statistics of a frequency patch are taken over its visible frames only, so the tokens of visible
                patches do not depend on the content of masked ones (the high-pass, the kernel and the GroupNorm all
                reach across patch boundaries). Tokens of masked patches are computed but meaningless.

        Returns:
            `torch.Tensor` of shape `(batch, N_f * N_t, output_dim)`: SBLU tokens, token ``f * N_t + t``.
        """
        if input_values.dim() == 4 and input_values.shape[1] == 1:
            input_values = input_values[:, 0]
        if input_values.dim() != 3 or input_values.shape[1] != self.num_mel_bins:
            raise ValueError(
                f"`input_values` must have shape (batch, {self.num_mel_bins}, frames) or (batch, 1, "
                f"{self.num_mel_bins}, frames), got {tuple(input_values.shape)}."
            )
        batch = input_values.shape[0]
        num_time = self.num_time_patches(input_values.shape[-1])
        if num_time < 1:
            raise ValueError(
                f"Need at least {self.patch_size[1]} frames (one time patch), got {input_values.shape[-1]}."
            )
        input_values = input_values[..., : num_time * self.patch_size[1]]
        frame_weights = None
        if visible_patches is not None:
            expected = (batch, self.num_frequency_patches, num_time)
            if visible_patches.dtype != torch.bool or tuple(visible_patches.shape) != expected:
                raise ValueError(
                    f"`visible_patches` must be a boolean tensor of shape {expected} (batch, N_f, N_t), got "
                    f"{visible_patches.dtype} {tuple(visible_patches.shape)}."
                )
            patch_f, patch_t = self.patch_size
            visible_bins = visible_patches.repeat_interleave(patch_f, 1).repeat_interleave(patch_t, 2)
            input_values = torch.where(visible_bins, input_values, torch.zeros((), dtype=input_values.dtype))
            frame_weights = visible_patches.repeat_interleave(self.frames_per_patch, -1)  # (B, N_f, N_out)
        hidden = self.highpass(input_values)
        hidden = self.input_map(hidden)
        if self.adaptive:
            expected = (batch, self.num_channels, num_time)
            for name, value in (("decay", decay), ("frequency", frequency)):
                if value is None or tuple(value.shape) != expected:
                    got = None if value is None else tuple(value.shape)
                    raise ValueError(
                        f"Adaptive SBLU needs `{name}` of shape {expected} (batch, N_f * H, N_t), got {got}."
                    )
            decay = decay.repeat_interleave(self.frames_per_patch, dim=-1)
            frequency = frequency.repeat_interleave(self.frames_per_patch, dim=-1)
        else:
            if decay is not None or frequency is not None:
                raise ValueError("A non-adaptive SBLU uses its own decay and frequency; do not pass them.")
            decay, frequency = self.fixed_parameters()
        hidden = sblu_conv(hidden, decay, frequency, self.kernel_size, self.stride, memory_budget=self.memory_budget)
        hidden = self.output_map(hidden.to(self.output_map.weight.dtype))
        hidden = self.norm(hidden) if frame_weights is None else self._visible_group_norm(hidden, frame_weights)
        hidden = self.patchify(hidden)  # (B, N_f * D_o, N_t)
        hidden = hidden.view(batch, self.num_frequency_patches, self.output_dim, num_time)
        return hidden.permute(0, 1, 3, 2).reshape(batch, self.num_frequency_patches * num_time, self.output_dim)

    def _visible_group_norm(self, hidden: torch.Tensor, frame_weights: torch.Tensor) -> torch.Tensor:
        """`self.norm` (one group per frequency patch) with mean and variance over the visible frames only
        (`frame_weights` `(B, N_f, N_out)`, `True` = visible); equals `self.norm` when every frame is visible. A
        frequency patch without visible frames gets finite values (its tokens are all masked)."""
        batch, _, num_out = hidden.shape
        grouped = hidden.view(batch, self.num_frequency_patches, self.output_dim, num_out)
        weights = frame_weights[:, :, None, :].to(grouped.dtype)
        count = (weights.sum(-1, keepdim=True) * self.output_dim).sum(-2, keepdim=True).clamp_min(1.0)
        mean = (grouped * weights).sum((-2, -1), keepdim=True) / count
        variance = ((grouped - mean).square() * weights).sum((-2, -1), keepdim=True) / count
        normed = ((grouped - mean) * torch.rsqrt(variance + self.norm.eps)).view(batch, -1, num_out)
        return normed * self.norm.weight[:, None] + self.norm.bias[:, None]

    def extra_repr(self) -> str:
        return (
            f"adaptive={self.adaptive}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"decay_min={self.decay_min:.4f}, frequency_band=({self.frequency_low:.4f}, {self.frequency_high:.4f})"
        )
