"""Selective scan: the chunked parallel PyTorch path against a sequential loop, gradients, stability, dispatch."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from specpatch import cpu_kernels
from specpatch.selective_scan import (
    causal_conv1d,
    mamba_kernels_available,
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)

# the module itself (`specpatch.selective_scan` may name the exported function)
ss = importlib.import_module("specpatch.selective_scan")

BATCH, DIM, LENGTH, D_STATE = 2, 6, 37, 5  # 37: not a multiple of any chunk size used below


def make_inputs(kind_B="variable", kind_C="variable", dtype=torch.float64, length=LENGTH, dim=DIM, groups=2, seed=0):
    """Random scan inputs with all optional arguments; `kind_*` in {"variable", "constant", "grouped"}."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    def operand(kind):
        return {
            "variable": lambda: randn(BATCH, D_STATE, length),
            "constant": lambda: randn(dim, D_STATE),
            "grouped": lambda: randn(BATCH, groups, D_STATE, length),
        }[kind]()

    return {
        "u": randn(BATCH, dim, length),
        "delta": randn(BATCH, dim, length) * 0.5,
        "A": -torch.rand(dim, D_STATE, generator=generator, dtype=dtype) * 3,
        "B": operand(kind_B),
        "C": operand(kind_C),
        "D": randn(dim),
        "z": randn(BATCH, dim, length),
        "delta_bias": randn(dim) * 0.5,
    }


@pytest.fixture(params=["parallel", "sequential", "compiled"])
def scan_mode(request, monkeypatch):
    """Runs a test with the PyTorch path's in-chunk recurrence as a parallel scan and as a step-by-step loop (its
    choice for large steps), whatever the sizes, and with the compiled CPU kernels (the CPU default when `B` and `C`
    are selective and shared by all channels; other operands take the PyTorch path)."""
    if request.param == "compiled":
        assert cpu_kernels.is_compiled()
        monkeypatch.setattr(ss, "_CPU_SEGMENT_STEPS", 8)  # several segments: saved starts and recomputation
        return request.param
    monkeypatch.setattr(ss, "_use_cpu_kernels", lambda *args: False)
    threshold = 0 if request.param == "sequential" else float("inf")
    monkeypatch.setitem(ss._SEQUENTIAL_MIN_STEP_ELEMENTS, "cpu", threshold)
    return request.param


def run(function, inputs, **kwargs):
    return function(**inputs, delta_softplus=True, return_last_state=True, **kwargs)


@pytest.mark.parametrize("kind_B, kind_C", [("variable", "variable"), ("constant", "constant"), ("grouped", "grouped"),
                                            ("variable", "constant"), ("grouped", "variable")])  # fmt: skip
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 16, None])
def test_matches_sequential_reference(kind_B, kind_C, chunk_size, scan_mode):
    inputs = make_inputs(kind_B, kind_C)
    out, last = run(selective_scan_torch, inputs, chunk_size=chunk_size)
    expected, expected_last = run(selective_scan_reference, inputs)
    assert out.shape == (BATCH, DIM, LENGTH) and last.shape == (BATCH, DIM, D_STATE)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, expected_last, rtol=1e-10, atol=1e-10)


def test_without_optional_arguments():
    inputs = make_inputs()
    core = {name: inputs[name] for name in ("u", "delta", "A", "B", "C")}
    core["delta"] = core["delta"].abs()
    out = selective_scan_torch(**core, chunk_size=8)
    torch.testing.assert_close(out, selective_scan_reference(**core), rtol=1e-10, atol=1e-10)
    assert isinstance(out, torch.Tensor)  # no last state unless asked


@pytest.mark.parametrize("kind_B, kind_C", [("variable", "variable"), ("constant", "grouped")])
@pytest.mark.parametrize("chunk_size", [5, 16])
def test_gradients_match_reference_autograd(kind_B, kind_C, chunk_size, scan_mode):
    inputs = {name: t.requires_grad_() for name, t in make_inputs(kind_B, kind_C).items()}
    out, last = run(selective_scan_torch, inputs, chunk_size=chunk_size)
    expected, expected_last = run(selective_scan_reference, inputs)
    generator = torch.Generator().manual_seed(1)
    grad_out = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    grad_last = torch.randn(last.shape, generator=generator, dtype=last.dtype)
    names = list(inputs)
    grads = torch.autograd.grad((out * grad_out).sum() + (last * grad_last).sum(), list(inputs.values()))
    expected_grads = torch.autograd.grad(
        (expected * grad_out).sum() + (expected_last * grad_last).sum(), list(inputs.values())
    )
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


def test_gradcheck_small(scan_mode):
    inputs = make_inputs(length=9, dim=3)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    tensors = tuple(inputs[name].requires_grad_() for name in names)

    def function(*args):
        return selective_scan_torch(*args, delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(function, tensors, fast_mode=True)


def test_float32_gradients_close_to_float64():
    inputs64 = {name: t.requires_grad_() for name, t in make_inputs(length=200, dim=8).items()}
    inputs32 = {name: t.detach().float().requires_grad_() for name, t in inputs64.items()}
    out64 = selective_scan_reference(**inputs64, delta_softplus=True)
    out32 = selective_scan_torch(**inputs32, delta_softplus=True)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)
    grads64 = torch.autograd.grad(out64.sum(), list(inputs64.values()))
    grads32 = torch.autograd.grad(out32.sum(), list(inputs32.values()))
    for grad32, grad64 in zip(grads32, grads64):
        torch.testing.assert_close(grad32.double(), grad64, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("regime", ["strong decay", "weak decay"])
def test_float32_is_stable_for_extreme_decays(regime):
    """Strong decays (delta * A down to about -2e3 per step, the states forget within one step) would overflow any
    `exp(-cumsum)` formulation; weak decays accumulate over the whole sequence. Both must stay accurate."""
    inputs = make_inputs(length=300, dim=8)
    if regime == "strong decay":
        inputs["delta"] = inputs["delta"].abs() * 20 + 1.0
        inputs["A"] = inputs["A"] * 30
    else:
        inputs["delta"] = inputs["delta"].abs() * 1e-3
        inputs["A"] = inputs["A"] * 0.01
    inputs["delta_bias"] = None
    expected = selective_scan_reference(**inputs)
    out = selective_scan_torch(**{name: t.float() if t is not None else None for name, t in inputs.items()})
    assert torch.isfinite(out).all()
    scale = expected.abs().max()
    torch.testing.assert_close(out.double() / scale, expected / scale, rtol=0, atol=2e-6)


def test_bfloat16_autocast_is_finite_and_close():
    inputs = make_inputs(length=120, dim=16, dtype=torch.float32)
    low = {name: t.bfloat16() if t.ndim == 3 or name == "B" or name == "C" else t for name, t in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan_torch(**low, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    # the recurrence itself runs in float32: compare with the float32 scan of the same rounded inputs
    expected = selective_scan_reference(**{n: t.float() for n, t in low.items()}, delta_softplus=True)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_long_sequence_and_channel_blocks(monkeypatch, scan_mode):
    """A long sequence, and a tile budget small enough that channels are split into blocks, give the reference."""
    # the sequential mode keeps all channels in a tile while it can: a budget below one step's worth splits them
    sequential = scan_mode == "sequential"
    length, budget_steps, num_chunks = (150, 1, 150) if sequential else (1500, 64, 24)
    inputs = make_inputs(length=length, dim=8, dtype=torch.float32)
    expected, expected_last = run(selective_scan_reference, inputs)
    monkeypatch.setitem(ss._MAX_TILE_ELEMENTS, "cpu", BATCH * budget_steps * D_STATE * 3)  # 3 channels per block
    _, channels, chunks, blocks, mode = ss._plan(BATCH, length, 8, D_STATE, 64, torch.device("cpu"))
    assert channels == 3 and len(blocks) == 3 and len(chunks) == num_chunks and mode == sequential
    inputs = {name: t.requires_grad_() for name, t in inputs.items()}
    out, last = run(selective_scan_torch, inputs, chunk_size=64)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, expected_last, rtol=1e-4, atol=1e-4)
    out.sum().backward()  # the blocked backward runs and gives finite gradients
    assert all(torch.isfinite(t.grad).all() for t in inputs.values())


@pytest.mark.parametrize("segment_steps, threads", [(1, 1), (5, 2), (64, 1)])
def test_compiled_cpu_kernels_match_reference_and_python(monkeypatch, segment_steps, threads):
    """The compiled CPU path (segments of 1, 5 and all steps; the batch split over 2 threads) gives the sequential
    reference's outputs, last state and gradients (also through the last state), and so do the uncompiled Python
    kernels it is compiled from."""
    inputs = make_inputs()
    assert ss._use_cpu_kernels(inputs["u"], inputs["B"], inputs["C"])
    monkeypatch.setattr(ss, "_CPU_SEGMENT_STEPS", segment_steps)
    monkeypatch.setattr(ss, "_CPU_PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(ss, "_cpu_kernel_threads", lambda *args: threads)
    leaves = {name: t.requires_grad_() for name, t in inputs.items()}
    weights = torch.randn(BATCH, DIM, D_STATE, dtype=torch.float64)

    def outputs_and_grads(function):
        out, last = run(function, leaves)
        grads = torch.autograd.grad(out.sum() + (last * weights).sum(), list(leaves.values()))
        return [out, last, *grads]

    expected = outputs_and_grads(selective_scan_reference)
    for python in (False, True):
        if python:
            for name in ("scan_forward_rows", "scan_backward_rows"):
                monkeypatch.setattr(ss, name, cpu_kernels.PYTHON_FUNCTIONS[name])
        for got, want in zip(outputs_and_grads(selective_scan_torch), expected):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind_B, kind_C", [("variable", "variable"), ("constant", "grouped")])
def test_reverse_equals_flipped_scan(kind_B, kind_C, scan_mode):
    """`reverse=True` equals scanning the time-flipped inputs and flipping the output back: values, last state and
    gradients (the compiled kernels index time backwards; the PyTorch path flips)."""
    inputs = {name: t.requires_grad_() for name, t in make_inputs(kind_B, kind_C).items()}
    time_dependent = {"u", "delta", "z"} | {k for k in ("B", "C") if inputs[k].ndim > 2}
    flipped = {k: (t.flip(-1) if k in time_dependent else t) for k, t in inputs.items()}
    want_out, want_last = run(selective_scan_reference, flipped)
    got_out, got_last = run(selective_scan_torch, inputs, reverse=True)
    torch.testing.assert_close(got_out, want_out.flip(-1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_last, want_last, rtol=1e-9, atol=1e-9)
    weights = torch.randn_like(got_last)
    want = torch.autograd.grad((want_out.flip(-1) ** 2).sum() + (want_last * weights).sum(), list(inputs.values()))
    got = torch.autograd.grad((got_out ** 2).sum() + (got_last * weights).sum(), list(inputs.values()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_fast_exp2_is_accurate():
    """The vectorised float32 exp2 of the compiled kernels is within a float32 ulp of exp2 over the decays' range
    (clamped below 2**-126, where float32 flushes anyway)."""
    exponent = torch.linspace(-130, 0, 4001, dtype=torch.float64)
    out, scale = torch.empty(4001, dtype=torch.float32), torch.empty(4001, dtype=torch.float32)
    cpu_kernels._exp2(exponent.float().numpy(), out.numpy(), scale.numpy(), scale.numpy().view("int32"), True)
    expected = torch.exp2(exponent.float().double().clamp_min(-126))
    assert ((out.double() - expected).abs() / expected).max() < 1.2e-7


def test_memory_is_bounded_for_vit_b_inference_sizes():
    """The AudioSet FFTP-991 case at ViT-B width (batch 32, d_inner 1536, 992 tokens): no tensor with a d_state
    axis is larger than the tile budget (a full (b, l, d, n) tensor would be 3.1 GB)."""
    for device in ("cpu", "cuda"):
        chunk, channels, _, _, _ = ss._plan(32, 992, 1536, 16, ss._DEFAULT_CHUNK_SIZE[device], torch.device(device))
        assert 32 * chunk * channels * 16 <= ss._MAX_TILE_ELEMENTS[device] < 32 * 992 * 1536 * 16


def test_dispatch_on_cpu_uses_the_pytorch_path(monkeypatch):
    def kernel(*args, **kwargs):
        raise AssertionError("the CUDA kernel must not run for CPU tensors")

    monkeypatch.setattr(ss, "_mamba_ssm_selective_scan_fn", lambda: kernel)
    monkeypatch.setattr(ss, "_causal_conv1d_fn", lambda: kernel)
    inputs = make_inputs(dtype=torch.float32)
    torch.testing.assert_close(run(selective_scan, inputs), run(selective_scan_torch, inputs))
    x, weight, bias = inputs["u"], torch.randn(DIM, 4), torch.randn(DIM)
    assert causal_conv1d(x, weight, bias, "silu").shape == x.shape


def test_kernel_availability_is_reported_and_cached():
    available = mamba_kernels_available()
    assert set(available) == {"selective_scan", "causal_conv1d"}
    assert ss._mamba_ssm_selective_scan_fn() is ss._mamba_ssm_selective_scan_fn()


@pytest.mark.parametrize("length", [10, 2])  # 2: shorter than the kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_causal_conv1d_matches_explicit_sum(length, channels_last):
    x = torch.randn(2, length, 3).transpose(1, 2) if channels_last else torch.randn(2, 3, length)
    weight, bias = torch.randn(3, 4), torch.randn(3)
    padded = F.pad(x, (3, 0))
    expected = sum(weight[:, k, None] * padded[:, :, k : k + length] for k in range(4)) + bias[:, None]
    torch.testing.assert_close(causal_conv1d(x, weight, bias), expected)
    torch.testing.assert_close(causal_conv1d(x, weight, None), expected - bias[:, None])
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation="silu"), F.silu(expected))
    torch.testing.assert_close(
        causal_conv1d(x, weight, bias), F.conv1d(x, weight[:, None], bias, padding=3, groups=3)[..., :length]
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("delta", torch.zeros(BATCH, DIM, LENGTH + 1), "delta"),
        ("A", torch.zeros(DIM + 1, D_STATE), "`A`"),
        ("B", torch.zeros(BATCH, D_STATE + 1, LENGTH), "`B`"),
        ("C", torch.zeros(BATCH, 4, D_STATE, LENGTH), "`C`"),  # 4 groups do not divide 6 channels
        ("D", torch.zeros(DIM + 1), "`D`"),
        ("z", torch.zeros(BATCH, DIM), "`z`"),
        ("delta_bias", torch.zeros(1), "delta_bias"),
    ],
)
def test_bad_shapes_raise(field, value, message):
    inputs = make_inputs(dtype=torch.float32)
    inputs[field] = value
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


def test_complex_A_and_bad_chunk_size_raise():
    inputs = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_torch(**inputs, chunk_size=0)
    inputs["A"] = inputs["A"].to(torch.complex64)
    with pytest.raises(ValueError, match="complex"):
        selective_scan_torch(**inputs)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not mamba_kernels_available()["selective_scan"],
    reason="needs a GPU and mamba_ssm",
)
@pytest.mark.parametrize("kind", ["variable", "grouped"])
def test_cuda_kernel_matches_pytorch_path(kind):
    inputs = {
        name: t.float().cuda().requires_grad_()
        for name, t in make_inputs(kind, kind, length=300, dim=16, dtype=torch.float32).items()
    }
    out = selective_scan(**inputs, delta_softplus=True)  # mamba_ssm's kernel
    expected = selective_scan_torch(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    grads = torch.autograd.grad(out.sum(), list(inputs.values()))
    expected_grads = torch.autograd.grad(expected.sum(), list(inputs.values()))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not mamba_kernels_available()["causal_conv1d"],
    reason="needs a GPU and causal_conv1d",
)
def test_cuda_causal_conv1d_matches_pytorch():
    x, weight, bias = torch.randn(2, 64, 100).cuda(), torch.randn(64, 4).cuda(), torch.randn(64).cuda()
    expected = F.silu(F.conv1d(x, weight[:, None], bias, padding=3, groups=64)[..., :100])
    torch.testing.assert_close(causal_conv1d(x, weight, bias, "silu"), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pytorch_path_on_cuda_matches_reference():
    inputs = make_inputs("grouped", "variable", length=300, dim=16, dtype=torch.float32)
    expected, expected_last = run(selective_scan_reference, inputs)
    cuda_inputs = {name: t.cuda().requires_grad_() for name, t in inputs.items()}
    out, last = run(selective_scan_torch, cuda_inputs)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.cpu(), expected_last, rtol=1e-4, atol=1e-4)
    cpu_inputs = {name: t.requires_grad_() for name, t in inputs.items()}
    cpu_out = run(selective_scan_torch, cpu_inputs)[0]
    grads = torch.autograd.grad(out.sum(), list(cuda_inputs.values()))
    expected_grads = torch.autograd.grad(cpu_out.sum(), list(cpu_inputs.values()))
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-3, atol=1e-3)
