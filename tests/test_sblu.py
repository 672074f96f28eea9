"""Tests of the SBLU operator of AaPE (specpatch/sblu.py) against direct, independent references."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from specpatch.sblu import (
    SBLU,
    SBLUConvFunction,
    ZeroPhaseHighPass,
    _bytes_per_position,
    _chunk_plan,
    design_highpass_taps,
    sblu_conv,
    sblu_conv_reference,
    sblu_decay_lower_bound,
    sblu_normalizer,
    zero_phase_highpass,
)

CHUNKED = ["recursive", "unfold"]


def _params(shape, generator, dtype=torch.float64):
    alpha = 0.05 + 0.9 * torch.rand(shape, generator=generator, dtype=dtype)
    omega = 0.1 + 3.0 * torch.rand(shape, generator=generator, dtype=dtype)
    return alpha, omega


def _num_out(length, stride):
    return (length - 1) // stride + 1


# ----------------------------------------------------------------------------------------------------------
# Normaliser and bounds
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 31, 63, 127])
def test_normalizer_closed_form_matches_direct_sum(kernel_size):
    c = (kernel_size - 1) // 2
    alpha = torch.tensor([0.0, 1e-9, 3e-7, 2e-6, 1e-3, 0.05, 0.149, 1.0, 7.0, 40.0], dtype=torch.float64)
    alpha.requires_grad_(True)
    m = torch.arange(-c, c + 1, dtype=torch.float64)
    direct = torch.exp(-alpha[:, None] * m.abs()).sum(-1)
    closed = sblu_normalizer(alpha, kernel_size)
    torch.testing.assert_close(closed, direct, rtol=1e-12, atol=0)
    (grad_closed,) = torch.autograd.grad(closed.sum(), alpha)
    (grad_direct,) = torch.autograd.grad(direct.sum(), alpha)
    assert torch.isfinite(grad_closed).all()
    torch.testing.assert_close(grad_closed, grad_direct, rtol=1e-9, atol=1e-9)
    assert closed[0].item() == pytest.approx(kernel_size)  # alpha -> 0: all K taps count 1


def test_normalizer_float32_is_accurate():
    alpha = torch.tensor([1e-7, 1e-4, 0.2, 3.0])
    reference = sblu_normalizer(alpha.double(), 63)
    torch.testing.assert_close(sblu_normalizer(alpha, 63).double(), reference, rtol=2e-6, atol=0)


def test_decay_lower_bound_gives_edge_attenuation():
    alpha_min = sblu_decay_lower_bound(63, 0.01)
    assert math.exp(-alpha_min * 31) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        sblu_decay_lower_bound(63, 1.5)
    with pytest.raises(ValueError):
        sblu_decay_lower_bound(64, 0.01)


# ----------------------------------------------------------------------------------------------------------
# SBLU convolution: forward
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", CHUNKED)
@pytest.mark.parametrize(
    "kernel_size,stride,length",
    [(5, 2, 11), (7, 3, 20), (9, 4, 6), (3, 5, 4), (1, 1, 5), (15, 1, 16), (31, 4, 61), (63, 4, 64)],
)
def test_adaptive_forward_matches_reference(method, kernel_size, stride, length):
    gen = torch.Generator().manual_seed(kernel_size * 100 + stride * 10 + length)
    x = torch.randn(2, 3, length, generator=gen, dtype=torch.float64)
    alpha, omega = _params((2, 3, _num_out(length, stride)), gen)
    reference = sblu_conv_reference(x, alpha, omega, kernel_size, stride)
    assert reference.shape == (2, 3, _num_out(length, stride))
    out = sblu_conv(x, alpha, omega, kernel_size, stride, method=method)
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "conv", "recursive", "unfold"])
@pytest.mark.parametrize("shape", ["per_channel", "broadcast_3d"])
def test_non_adaptive_broadcast_matches_reference(method, shape):
    gen = torch.Generator().manual_seed(1)
    batch, channels, length, kernel_size, stride = 3, 4, 37, 11, 3
    x = torch.randn(batch, channels, length, generator=gen, dtype=torch.float64)
    alpha, omega = _params((channels,), gen)
    if shape == "broadcast_3d":
        alpha, omega = alpha.view(1, channels, 1), omega.view(1, channels, 1)
    expanded = [p.reshape(1, channels, 1).expand(batch, channels, _num_out(length, stride)) for p in (alpha, omega)]
    reference = sblu_conv_reference(x, *expanded, kernel_size, stride)
    torch.testing.assert_close(sblu_conv(x, alpha, omega, kernel_size, stride, method=method), reference)


def test_batch_varying_time_constant_parameters():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 20, generator=gen, dtype=torch.float64)
    alpha, omega = _params((2, 3, 1), gen)
    reference = sblu_conv_reference(x, alpha.expand(2, 3, 10), omega.expand(2, 3, 10), 7, 2)
    torch.testing.assert_close(sblu_conv(x, alpha, omega, 7, 2), reference)
    with pytest.raises(ValueError, match="method='conv'"):
        sblu_conv(x, alpha, omega, 7, 2, method="conv")


def test_kernel_centre_sits_on_frame_n_times_stride():
    # An impulse at frame t0 reaches output n with lag m = n * s - t0 and weight exp(-alpha |m|) / Z.
    kernel_size, stride, length, t0 = 9, 2, 21, 10
    x = torch.zeros(1, 1, length, dtype=torch.float64)
    x[..., t0] = 1.0
    alpha = torch.tensor([0.3], dtype=torch.float64)
    omega = torch.tensor([1.1], dtype=torch.float64)
    out = sblu_conv(x, alpha, omega, kernel_size, stride, method="recursive")[0, 0]
    lags = torch.arange(out.numel(), dtype=torch.float64) * stride - t0
    inside = lags.abs() <= (kernel_size - 1) // 2
    expected = torch.where(inside, torch.exp(-0.3 * lags.abs()), torch.zeros_like(lags))
    torch.testing.assert_close(out, expected / sblu_normalizer(alpha, kernel_size))


def test_real_tone_gain():
    """Unit gain means: a complex tone exp(i omega t) at the kernel frequency gives |S| / Z = 1 exactly. The input
    is real; a real tone cos(omega t + phi) = (e^{i theta} + e^{-i theta}) / 2 gives
    y = |e^{i theta} + e^{-i theta} W(2 omega) / Z| / 2 with W the window spectrum (the image at -omega leaks
    through W(2 omega)); at omega = pi both images coincide and y = |cos(phi)| exactly."""
    kernel_size, length, c = 63, 300, 31
    t = torch.arange(length, dtype=torch.float64)
    m = torch.arange(-c, c + 1, dtype=torch.float64)
    n = torch.arange(c, length - c, dtype=torch.float64)  # windows fully inside the signal
    for omega, alpha, phi in [(math.pi, 0.2, 0.3), (1.0, 0.15, 0.7), (2.0, 0.3, 0.0), (0.5, 0.149, 1.3)]:
        x = torch.cos(omega * t + phi)[None, None]
        params = torch.tensor([alpha], dtype=torch.float64), torch.tensor([omega], dtype=torch.float64)
        out = sblu_conv(x, *params, kernel_size, 1)[0, 0, c : length - c]
        window = torch.exp(-alpha * m.abs())
        image = (window * torch.cos(2 * omega * m)).sum() / window.sum()
        theta = omega * n + phi
        expected = 0.5 * torch.abs(
            torch.polar(torch.ones_like(theta), theta) + image * torch.polar(torch.ones_like(theta), -theta)
        )
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        if omega == math.pi:
            torch.testing.assert_close(out, torch.full_like(out, abs(math.cos(phi))))
    # A long window (small decay) away from 0 and pi: the real tone passes with gain 1/2.
    x = torch.cos(1.3 * torch.arange(2000, dtype=torch.float64))[None, None]
    out = sblu_conv(x, torch.tensor([0.01], dtype=torch.float64), torch.tensor([1.3], dtype=torch.float64), 1001, 1)
    assert (out[0, 0, 500:1500] - 0.5).abs().max() < 2e-3


def test_out_of_band_tone_is_attenuated():
    # A slow (aliasing-free) component at pi / 32 is strongly attenuated by a kernel tuned to the top of the band.
    t = torch.arange(400, dtype=torch.float64)
    params = torch.tensor([0.15], dtype=torch.float64), torch.tensor([2.5], dtype=torch.float64)
    slow = sblu_conv(torch.cos(math.pi / 32 * t)[None, None], *params, 63, 4)[0, 0, 10:-10]
    fast = sblu_conv(torch.cos(2.5 * t)[None, None], *params, 63, 4)[0, 0, 10:-10]
    assert slow.max() < 0.05 < 0.45 < fast.min()


# ----------------------------------------------------------------------------------------------------------
# SBLU convolution: backward and memory bound
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", CHUNKED)
@pytest.mark.parametrize("budget", [2000, 10**9])  # a few output positions per chunk, or one chunk
def test_gradcheck_custom_function(method, budget):
    gen = torch.Generator().manual_seed(3)
    kernel_size, stride, length = 5, 2, 11
    x = torch.randn(2, 2, length, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha, omega = (p.requires_grad_(True) for p in _params((2, 2, _num_out(length, stride)), gen))
    assert torch.autograd.gradcheck(
        lambda x, a, w: SBLUConvFunction.apply(x, a, w, kernel_size, stride, budget, method), (x, alpha, omega)
    )


def test_gradcheck_fixed_kernel_paths():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha, omega = (p.requires_grad_(True) for p in _params((3,), gen))
    for method in ("conv", "recursive"):
        assert torch.autograd.gradcheck(
            lambda x, a, w, method=method: sblu_conv(x, a, w, 7, 3, method=method),
            (x, alpha, omega),
            fast_mode=method == "conv",  # the full check of the conv1d path is slow and adds nothing here
        )


@pytest.mark.parametrize("method", CHUNKED)
def test_float32_gradients_match_reference_autograd(method):
    gen = torch.Generator().manual_seed(5)
    kernel_size, stride, length = 31, 4, 90
    x = torch.randn(2, 3, length, generator=gen, requires_grad=True)
    alpha, omega = (p.float().requires_grad_(True) for p in _params((2, 3, _num_out(length, stride)), gen))
    grad_out = torch.randn(2, 3, _num_out(length, stride), generator=gen)
    out = sblu_conv(x, alpha, omega, kernel_size, stride, method=method, memory_budget=4096)
    reference = sblu_conv_reference(x, alpha, omega, kernel_size, stride)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(out, (x, alpha, omega), grad_out)
    theirs = torch.autograd.grad(reference, (x, alpha, omega), grad_out)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", CHUNKED)
def test_chunking_does_not_change_results(method):
    gen = torch.Generator().manual_seed(6)
    kernel_size, stride, length = 9, 3, 50
    x = torch.randn(3, 4, length, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha, omega = (p.requires_grad_(True) for p in _params((3, 4, _num_out(length, stride)), gen))
    grad_out = torch.randn(3, 4, _num_out(length, stride), generator=gen, dtype=torch.float64)
    results = []
    # 1 byte: one output position per chunk; 2 KiB: several rows and a few frames; 1 GiB: one chunk.
    for budget in (1, 2048, 2**30):
        out = sblu_conv(x, alpha, omega, kernel_size, stride, method=method, memory_budget=budget)
        results.append((out, *torch.autograd.grad(out, (x, alpha, omega), grad_out)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", CHUNKED)
def test_chunk_plan_respects_the_memory_budget(method):
    # AaPE pre-training shapes: 512 clips x 128 channels x 152 output frames, K = 63.
    rows, num_out, budget = 512 * 128, 152, 16 * 2**20
    per_position = _bytes_per_position(method, 63, 4, 4)
    row_chunk, frame_chunk = _chunk_plan(rows, num_out, per_position, budget)
    assert row_chunk * frame_chunk * per_position <= budget
    assert row_chunk < rows  # the whole batch is never processed at once
    # Very long inputs are split along time too: the chunk does not grow with the length.
    row_chunk, frame_chunk = _chunk_plan(4, 10**7, per_position, budget)
    assert row_chunk == 1 and frame_chunk * per_position <= budget


@pytest.mark.parametrize("method", CHUNKED + ["conv"])
def test_zero_response_has_finite_gradients(method):
    x = torch.zeros(1, 2, 12, dtype=torch.float64, requires_grad=True)
    alpha = torch.full((2,), 0.3, dtype=torch.float64, requires_grad=True)
    omega = torch.full((2,), 1.0, dtype=torch.float64, requires_grad=True)
    out = sblu_conv(x, alpha, omega, 5, 2, method=method)
    assert (out == 0).all()
    grads = torch.autograd.grad(out.sum(), (x, alpha, omega))
    assert all(torch.isfinite(g).all() for g in grads)


def test_half_precision_and_autocast_compute_in_float32():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 40, generator=gen)
    alpha, omega = (p.float() for p in _params((2, 3, 10), gen))
    full = sblu_conv(x, alpha, omega, 15, 4)
    out = sblu_conv(x.bfloat16(), alpha.bfloat16(), omega.bfloat16(), 15, 4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, full, rtol=0.05, atol=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sblu_conv(x, alpha, omega, 15, 4)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, full)
    assert sblu_conv(x.double(), alpha.double(), omega.double(), 15, 4).dtype == torch.float64


def test_sblu_conv_rejects_bad_input():
    x = torch.randn(2, 3, 10)
    a = torch.rand(2, 3, 5)
    with pytest.raises(ValueError, match="kernel_size"):
        sblu_conv(x, a, a, 4, 2)
    with pytest.raises(ValueError, match="stride"):
        sblu_conv(x, a, a, 5, 0)
    with pytest.raises(ValueError, match="batch, channels, time"):
        sblu_conv(x[0], a, a, 5, 2)
    with pytest.raises(ValueError, match="does not broadcast"):
        sblu_conv(x, torch.rand(2, 3, 4), a, 5, 2)
    with pytest.raises(ValueError, match="method"):
        sblu_conv(x, a, a, 5, 2, method="fft")
    with pytest.raises(ValueError, match="floating point"):
        sblu_conv(x, torch.ones(2, 3, 5, dtype=torch.long), a, 5, 2)


# ----------------------------------------------------------------------------------------------------------
# Zero-phase high-pass
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padtype", ["odd", "even", "constant"])
def test_highpass_matches_scipy_filtfilt(padtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 300))
    taps = scipy.signal.firwin(63, 1 / 16, window="hamming", pass_zero=False)
    np.testing.assert_allclose(design_highpass_taps(1 / 16, 63), taps)
    expected = scipy.signal.filtfilt(taps, [1.0], x, padtype=padtype)  # default padlen 189 >= 2 * 62
    out = zero_phase_highpass(torch.from_numpy(x), 1 / 16, 63, padtype=padtype)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)


def test_highpass_zero_padding_matches_numpy_convolution():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 100))
    taps = design_highpass_taps(1 / 8, 31)
    expected = []
    for row in x:  # forward pass, then the backward pass as filtering of the reversed signal
        forward = np.convolve(np.pad(row, (60, 60)), taps)[15:-15]
        expected.append(np.convolve(forward[::-1], taps)[15:-15][::-1][60:-60])
    out = zero_phase_highpass(torch.from_numpy(x), 1 / 8, 31, padtype="zeros")
    np.testing.assert_allclose(out.numpy(), np.stack(expected), atol=1e-12)


def test_highpass_magnitude_response():
    t = torch.arange(2000, dtype=torch.float64)
    cutoff = 1 / 16  # of Nyquist: pi / 16 rad per frame

    def gain(omega):  # amplitude of the output sinusoid by least squares, away from the edges
        out = zero_phase_highpass(torch.cos(omega * t + 0.4), cutoff)[500:1500]
        basis = torch.stack([torch.cos(omega * t[500:1500]), torch.sin(omega * t[500:1500])], -1)
        coef = torch.linalg.lstsq(basis, out[:, None]).solution
        return coef.norm().item()

    assert zero_phase_highpass(torch.full((2000,), 3.0, dtype=torch.float64), cutoff)[100:-100].abs().max() < 1e-4
    assert gain(math.pi / 64) < 1e-3  # deep stop band
    assert gain(math.pi * cutoff) == pytest.approx(0.25, abs=0.01)  # -6 dB of firwin, squared by filtfilt
    for omega in (math.pi / 4, math.pi / 2, 0.9 * math.pi):
        assert gain(omega) == pytest.approx(1.0, abs=0.01)
    # Zero phase: a symmetric pulse stays symmetric about the same centre.
    pulse = torch.zeros(201, dtype=torch.float64)
    pulse[100] = 1.0
    out = zero_phase_highpass(pulse, cutoff, padtype="zeros")
    torch.testing.assert_close(out, out.flip(0))
    assert out.abs().argmax().item() == 100


def test_highpass_module_batched_differentiable_short_inputs():
    module = ZeroPhaseHighPass(1 / 16)
    assert "taps" not in module.state_dict()
    x = torch.randn(2, 5, 80, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, zero_phase_highpass(x, 1 / 16), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for length in (1, 2, 20):  # shorter than the 62-sample edge extension: reflections repeat
        assert torch.isfinite(module(torch.randn(3, length))).all()
    with pytest.raises(ValueError):
        ZeroPhaseHighPass(1.5)
    with pytest.raises(ValueError):
        ZeroPhaseHighPass(0.1, num_taps=64)
    with pytest.raises(ValueError):
        zero_phase_highpass(x, 0.1, padtype="wrap")


# ----------------------------------------------------------------------------------------------------------
# The SBLU block
# ----------------------------------------------------------------------------------------------------------


def _small_sblu(**kwargs):
    config = dict(num_mel_bins=16, patch_size=8, hidden_channels=4, kernel_size=15, stride=2, output_dim=6)
    config.update(kwargs)
    return SBLU(**config)


def _lambda_tokens(module, batch, num_time, generator):
    tokens = module.num_frequency_patches * num_time
    return torch.randn(batch, tokens, 2 * module.hidden_channels, generator=generator)


def test_default_parameter_count_and_bounds():
    adaptive, fixed = SBLU(), SBLU(adaptive=False)
    # B: 128 x 16, C: 1536 x 16, GroupNorm: 2 x 1536, patchify: 1536 x 4 + 1536 (+ 2 x 128 non-adaptive).
    assert sum(p.numel() for p in adaptive.parameters()) == 37_376
    assert sum(p.numel() for p in fixed.parameters()) == 37_632
    assert adaptive.num_channels == 128 and adaptive.decay_min == pytest.approx(math.log(100) / 31)
    decay, frequency = fixed.bound_parameters(torch.tensor([-50.0, 0.0, 50.0]), torch.tensor([-50.0, 0.0, 50.0]))
    torch.testing.assert_close(decay[0], torch.tensor(fixed.decay_min))
    assert (decay >= fixed.decay_min).all()
    torch.testing.assert_close(frequency, torch.tensor([math.pi / 16, (math.pi / 16 + math.pi) / 2, math.pi]))


@pytest.mark.parametrize("adaptive", [True, False])
def test_sblu_shapes_and_input_layouts(adaptive):
    gen = torch.Generator().manual_seed(8)
    module = _small_sblu(adaptive=adaptive)
    x = torch.randn(2, 16, 40, generator=gen)
    kwargs = {}
    if adaptive:
        kwargs = dict(zip(("decay", "frequency"), module.parameters_from_tokens(_lambda_tokens(module, 2, 5, gen))))
    out = module(x, **kwargs)
    assert out.shape == (2, 2 * 5, 6)
    torch.testing.assert_close(module(x[:, None], **kwargs), out)
    # Frames beyond the last whole time patch are dropped, like a Conv2d patch embedding.
    torch.testing.assert_close(module(torch.cat([x, torch.randn(2, 16, 7)], -1), **kwargs), out)


def test_sblu_pipeline_order_and_token_order():
    """Recomputes the block step by step (NOTES.md order) and checks token f * N_t + t = channel block f, time t."""
    gen = torch.Generator().manual_seed(9)
    module = _small_sblu()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(generator=gen)
    x = torch.randn(2, 16, 48, generator=gen)
    decay, frequency = module.parameters_from_tokens(_lambda_tokens(module, 2, 6, gen))
    out = module(x, decay, frequency)
    hidden = zero_phase_highpass(x, 1 / 8, 63)
    hidden = torch.nn.functional.conv1d(hidden, module.input_map.weight, groups=2)
    # Parameters repeated p_t times at the input rate, then every s-th frame (Sec. III-C).
    alpha = decay.repeat_interleave(8, -1)[..., ::2]
    omega = frequency.repeat_interleave(8, -1)[..., ::2]
    hidden = sblu_conv_reference(hidden.double(), alpha.double(), omega.double(), 15, 2).float()
    hidden = torch.nn.functional.conv1d(hidden, module.output_map.weight, groups=2)
    hidden = torch.nn.functional.group_norm(hidden, 2, module.norm.weight, module.norm.bias, module.norm.eps)
    hidden = torch.nn.functional.conv1d(
        hidden, module.patchify.weight, module.patchify.bias, stride=4, groups=hidden.shape[1]
    )  # (B, N_f * D_o, N_t)
    for f in range(2):
        for t in range(6):
            torch.testing.assert_close(out[:, f * 6 + t], hidden[:, f * 6 : (f + 1) * 6, t], rtol=1e-4, atol=1e-4)


def test_frequency_patches_stay_independent():
    gen = torch.Generator().manual_seed(10)
    module = _small_sblu(adaptive=False)
    x = torch.zeros(1, 16, 32)
    x[:, 8:] = torch.randn(1, 8, 32, generator=gen)  # only the second frequency patch carries signal
    out = module(x)
    assert out[:, :4].abs().max() == 0  # tokens 0 .. N_t - 1 belong to frequency patch 0
    assert out[:, 4:].abs().max() > 0


def test_parameters_from_tokens_layout():
    module = _small_sblu()
    batch, num_time, hidden = 2, 3, module.hidden_channels
    tokens = torch.zeros(batch, 2 * num_time, 2 * hidden)
    tokens[1, 1 * num_time + 2, 3] = 5.0  # batch 1, frequency patch 1, time patch 2, decay of hidden channel 3
    tokens[0, 0 * num_time + 1, hidden + 2] = -5.0  # batch 0, frequency patch 0, time 1, frequency of channel 2
    decay, frequency = module.parameters_from_tokens(tokens)
    assert decay.shape == frequency.shape == (batch, 2 * hidden, num_time)
    base_decay, base_frequency = module.bound_parameters(torch.zeros(()), torch.zeros(()))
    assert torch.nonzero(decay != base_decay).tolist() == [[1, 1 * hidden + 3, 2]]
    assert torch.nonzero(frequency != base_frequency).tolist() == [[0, 2, 1]]
    assert (decay >= module.decay_min).all()
    assert (frequency >= math.pi / 8).all() and (frequency <= math.pi).all()


def test_gradients_reach_every_parameter_and_the_adaptive_inputs():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 32, generator=gen, requires_grad=True)
    fixed = _small_sblu(adaptive=False)
    fixed(x).square().mean().backward()
    for name, p in fixed.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    adaptive = _small_sblu()
    raw = _lambda_tokens(adaptive, 2, 4, gen).requires_grad_(True)
    adaptive(x, *adaptive.parameters_from_tokens(raw)).square().mean().backward()
    assert raw.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    for name, p in adaptive.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_adaptive_with_constant_parameters_equals_non_adaptive():
    gen = torch.Generator().manual_seed(12)
    fixed = _small_sblu(adaptive=False)
    adaptive = _small_sblu()
    adaptive.load_state_dict({k: v for k, v in fixed.state_dict().items() if not k.startswith("raw_")})
    x = torch.randn(2, 16, 32, generator=gen)
    decay, frequency = (p[None, :, None].expand(2, -1, 4) for p in fixed.fixed_parameters())
    torch.testing.assert_close(adaptive(x, decay, frequency), fixed(x), rtol=1e-4, atol=1e-5)


def test_reset_parameters_inits_and_respects_loaded_flags():
    module = _small_sblu(adaptive=False)
    torch.testing.assert_close(module.patchify.weight, torch.full_like(module.patchify.weight, 0.25))
    decay, frequency = module.fixed_parameters()
    torch.testing.assert_close(decay, torch.full_like(decay, 2 * module.decay_min))
    band = math.pi - math.pi / 8
    expected = math.pi / 8 + band * (torch.arange(4) + 0.5) / 4
    torch.testing.assert_close(frequency, expected.repeat(2))
    with torch.no_grad():
        module.raw_decay.fill_(3.0)
    module.raw_decay._is_hf_initialized = True
    module.reset_parameters()
    assert (module.raw_decay == 3.0).all()


def test_sblu_rejects_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="divisible"):
        SBLU(num_mel_bins=100)
    with pytest.raises(ValueError, match="stride"):
        SBLU(stride=5)
    with pytest.raises(ValueError, match="kernel_size"):
        SBLU(kernel_size=64)
    adaptive, fixed = _small_sblu(), _small_sblu(adaptive=False)
    x = torch.randn(1, 16, 32)
    with pytest.raises(ValueError, match="decay"):
        adaptive(x)
    with pytest.raises(ValueError, match="decay"):
        adaptive(x, torch.ones(1, 8, 3), torch.ones(1, 8, 3))
    with pytest.raises(ValueError, match="non-adaptive"):
        fixed(x, torch.ones(1, 8, 4), torch.ones(1, 8, 4))
    with pytest.raises(ValueError, match="num_mel_bins|16"):
        fixed(torch.randn(1, 32, 12))
    with pytest.raises(ValueError, match="time patch"):
        fixed(torch.randn(1, 16, 7))
    with pytest.raises(ValueError, match="lambda_tokens"):
        adaptive.parameters_from_tokens(torch.randn(1, 8, 5))


@pytest.mark.parametrize("kernel_size", [31, 63, 127])
def test_default_attenuation_keeps_window_spectrum_positive(kernel_size):
    # The justification of attenuation_eps = 0.01: at the decay bound the truncated two-sided exponential has a
    # spectrum without zero crossings (which would flip the sign of the frequency gradient, Sec. III-B).
    c = (kernel_size - 1) // 2
    m = torch.arange(-c, c + 1, dtype=torch.float64)
    omega = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    window = torch.exp(-sblu_decay_lower_bound(kernel_size, 0.01) * m.abs())
    spectrum = (window * torch.cos(omega[:, None] * m)).sum(-1)
    assert spectrum.min() > 0
    looser = torch.exp(-sblu_decay_lower_bound(kernel_size, 0.1) * m.abs())
    assert (looser * torch.cos(omega[:, None] * m)).sum(-1).min() < 0
