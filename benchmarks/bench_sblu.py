"""Benchmark of the SBLU convolution (specpatch/sblu.py): speed and peak memory, side by side in one run.

Compares, at AaPE ViT-B shapes per clip (C = N_f * H = 128 channels, T = 608 frames, K = 63, s = 4):

- ``reference``: the direct form that materialises the full ``(B, C, N_out, K)`` complex kernel and windowed input
  (plain autograd), i.e. the naive implementation;
- ``unfold``: chunked, kernels generated on the fly per lag, custom backward;
- ``recursive``: chunked Horner / state recursion over the lags, custom backward (the default);
- for the non-adaptive variant (one kernel per channel): ``conv`` (depthwise conv1d, the default) and
  ``recursive`` with expanded parameters.

Times are the minimum over repeats, forward and forward + backward; peak memory is the growth of the peak
resident set size of a fresh process running one forward + backward (so it includes autograd's saved tensors).

    python benchmarks/bench_sblu.py [--batch 8] [--repeats 3] [--threads 1]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specpatch.sblu import SBLU, sblu_conv, sblu_conv_reference  # noqa: E402

CHANNELS, FRAMES, KERNEL, STRIDE = 128, 608, 63, 4


def make_inputs(batch, adaptive, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_out = (FRAMES - 1) // STRIDE + 1
    shape = (batch, CHANNELS, num_out) if adaptive else (CHANNELS,)
    x = torch.randn(batch, CHANNELS, FRAMES, generator=gen, requires_grad=True)
    alpha = (0.15 + 0.5 * torch.rand(shape, generator=gen)).requires_grad_(True)
    omega = (0.2 + 2.9 * torch.rand(shape, generator=gen)).requires_grad_(True)
    return x, alpha, omega


def run(method, x, alpha, omega):
    if method == "reference":
        if alpha.dim() == 1:
            num_out = (x.shape[-1] - 1) // STRIDE + 1
            alpha, omega = (p[None, :, None].expand(x.shape[0], -1, num_out) for p in (alpha, omega))
        return sblu_conv_reference(x, alpha, omega, KERNEL, STRIDE)
    return sblu_conv(x, alpha, omega, KERNEL, STRIDE, method=method)


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _status_mib(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def measure_memory(method, batch, adaptive):
    """Runs in a fresh process: growth of the peak resident set (MiB) during one forward + backward, read from
    Linux's VmHWM after resetting it through /proc/self/clear_refs; None where that is not available."""
    x, alpha, omega = make_inputs(batch, adaptive)
    grad = torch.ones((batch, CHANNELS, (FRAMES - 1) // STRIDE + 1))
    run(method, x[:1], alpha[:1] if adaptive else alpha, omega[:1] if adaptive else omega).sum().backward()
    x.grad = alpha.grad = omega.grad = None
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets the peak resident set size (VmHWM) to the current one
        before = _status_mib("VmRSS")
    except OSError:
        return None
    torch.autograd.grad(run(method, x, alpha, omega), (x, alpha, omega), grad)
    return _status_mib("VmHWM") - before


def memory_in_subprocess(method, batch, adaptive):
    cmd = [sys.executable, __file__, "--measure-memory", method, "--batch", str(batch), "--threads", "1"]
    if not adaptive:
        cmd.append("--non-adaptive")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def bench(methods, batch, adaptive, repeats):
    x, alpha, omega = make_inputs(batch, adaptive)
    grad = torch.randn(batch, CHANNELS, (FRAMES - 1) // STRIDE + 1)
    rows = {}
    for method in methods:

        def forward(method=method):
            with torch.no_grad():
                run(method, x, alpha, omega)

        def forward_backward(method=method):
            torch.autograd.grad(run(method, x, alpha, omega), (x, alpha, omega), grad)

        rows[method] = (
            best_time(forward, repeats),
            best_time(forward_backward, repeats),
            memory_in_subprocess(method, batch, adaptive),
        )
    return rows


def print_table(title, rows, baseline):
    base_fwd, base_fb, base_mem = rows[baseline]
    print(f"\n{title}")
    print(
        f"{'method':<12}{'fwd ms':>10}{'speed-up':>10}{'fwd+bwd ms':>12}{'speed-up':>10}{'peak MiB':>10}{'ratio':>8}"
    )
    for method, (fwd, fb, mem) in rows.items():
        print(
            f"{method:<12}{fwd * 1e3:>10.1f}{base_fwd / fwd:>9.1f}x{fb * 1e3:>12.1f}{base_fb / fb:>9.1f}x"
            + (f"{mem:>10.1f}{mem / base_mem:>8.2f}" if mem is not None and base_mem else f"{'n/a':>10}{'':>8}")
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="clips per batch (AaPE pre-training uses 512)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: ratios that do not depend on other load)"
    )
    parser.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--non-adaptive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        torch.set_num_threads(args.threads or 1)
        peak = measure_memory(args.measure_memory, args.batch, not args.non_adaptive)
        print(json.dumps({"peak_mib": peak}))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    num_out = (FRAMES - 1) // STRIDE + 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"shape: batch {args.batch} x channels {CHANNELS} x frames {FRAMES} -> {num_out} outputs, "
        f"K = {KERNEL}, s = {STRIDE}, float32"
    )
    kernel_bytes = args.batch * CHANNELS * num_out * KERNEL * 8
    print(
        f"full complex kernel the direct form materialises: {kernel_bytes / 2**20:.0f} MiB at this batch, "
        f"{512 * CHANNELS * num_out * KERNEL * 8 / 2**30:.1f} GiB at the pre-training batch of 512"
    )
    adaptive = bench(["reference", "unfold", "recursive"], args.batch, True, args.repeats)
    print_table(
        "Adaptive SBLU (per-frame decay and frequency); speed-up and memory ratio vs reference", adaptive, "reference"
    )
    fixed = bench(["reference", "recursive", "conv"], args.batch, False, args.repeats)
    print_table(
        "Non-adaptive SBLU (one kernel per channel); speed-up and memory ratio vs reference", fixed, "reference"
    )

    # Scratch budget per chunk of the default (recursive) adaptive path.
    x, alpha, omega = make_inputs(args.batch, True)
    grad = torch.randn(args.batch, CHANNELS, num_out)
    print("\nAdaptive recursive path, memory budget per chunk sweep (fwd+bwd ms):")
    cells = []
    for mib in (1, 4, 16, 64):

        def step(mib=mib):
            out = sblu_conv(x, alpha, omega, KERNEL, STRIDE, memory_budget=mib * 2**20)
            torch.autograd.grad(out, (x, alpha, omega), grad)

        cells.append(f"{mib} MiB: {best_time(step, args.repeats) * 1e3:.1f}")
    print("  " + ", ".join(cells))

    # The whole block at the default configuration (high-pass, B, SBLU, C, GroupNorm, patchify).
    gen = torch.Generator().manual_seed(0)
    spectrogram = torch.randn(args.batch, 128, FRAMES, generator=gen)
    for mode in (True, False):
        module = SBLU(adaptive=mode)
        kwargs = {}
        if mode:
            tokens = torch.randn(
                args.batch, module.num_frequency_patches * 38, 2 * module.hidden_channels, generator=gen
            )
            kwargs = dict(zip(("decay", "frequency"), module.parameters_from_tokens(tokens)))

        def step(module=module, kwargs=kwargs):
            module(spectrogram, **kwargs).square().mean().backward()

        count = sum(p.numel() for p in module.parameters())
        print(
            f"\nSBLU block ({'adaptive' if mode else 'non-adaptive'}, defaults): {count:,} parameters, "
            f"forward + backward {best_time(step, args.repeats) * 1e3:.1f} ms for {args.batch} clips"
        )


if __name__ == "__main__":
    main()
