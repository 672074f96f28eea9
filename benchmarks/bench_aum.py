"""FFTP-AuM efficiency: the pure-PyTorch selective scan against transformers' Mamba slow path, and FFTP-AuM latency
per Table II patching.

1. One Mamba mixer direction (`FFTPAuMMixer(bimamba_type="none")`) against transformers' `MambaMixer` carrying the
   same weights, on its PyTorch path (no `mamba_ssm` / `causal_conv1d`: a Python loop over time steps): batch 2,
   1000 tokens, width 192, d_state 16, expand 2. Forward (no grad) and forward + backward times, fastest of
   interleaved runs; transformers' forward + backward runs `--hf-backward-repeats` times (1 by default: it takes
   about a minute on 2 cores). Outputs and input gradients of the two are compared as well.
2. FFTP-AuM (`--size`, tiny by default: 192 wide, 24 layers, Fo-Bi) forward latency for each Table II patching, as
   a ratio to the square (1212-patch) configuration, batch `--batch-size`.

Ratios are measured side by side in this process, so they compare across machines; absolute times do not.

    python benchmarks/bench_aum.py [--repeats 10] [--threads N] [--size tiny] [--skip-hf-backward] [--json out.json]

The forward comparison runs with one thread and with torch's thread count (or `--threads`): on a machine shared with
other work, multi-threaded timings are unreliable (every parallel op waits for its slowest thread, which penalises
the chunked scan's few large ops more than transformers' loop of small single-threaded ones); the one-thread row is
the per-core comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from timing import interleaved, load_average
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer
from transformers.utils import logging as hf_logging

from specpatch import FFTPASTConfig, FFTPASTForAudioClassification
from specpatch.configuration_fftp_aum import FFTPAuMConfig
from specpatch.configuration_patching import TABLE_II_PRESETS
from specpatch.modeling_fftp_aum import FFTPAuMForAudioClassification, FFTPAuMMixer
from specpatch.selective_scan import selective_scan_torch

NUM_LABELS = 527


def build_mixers(width: int, d_state: int, expand: int) -> tuple[MambaMixer, FFTPAuMMixer]:
    """transformers' mixer with Mamba's initialisation, and ours carrying the same weights."""
    config = MambaConfig(hidden_size=width, state_size=d_state, expand=expand, conv_kernel=4, num_hidden_layers=1)
    theirs = MambaMixer(config, layer_idx=0)
    ours = FFTPAuMMixer(
        width, config.intermediate_size, d_state, config.conv_kernel, config.time_step_rank, bimamba_type="none"
    )
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def fastest(functions: dict, repeats: int) -> dict[str, float]:
    """Fastest wall time of each function, run round-robin (after one warm-up) so that load affects all alike."""
    times = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def _threads(count: int) -> str:
    return f"{count} thread" + ("s" if count > 1 else "")


def forward_backward(mixer: torch.nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    inputs = inputs.detach().requires_grad_()
    mixer.zero_grad(set_to_none=True)
    (mixer(inputs) * grad_output).sum().backward()
    return inputs.grad


def bench_mixer(args) -> dict:
    torch.manual_seed(0)
    theirs, ours = build_mixers(args.width, args.d_state, args.expand)
    inputs = torch.randn(args.mixer_batch, args.tokens, args.width)
    grad_output = torch.randn_like(inputs)
    with torch.no_grad():
        max_diff = (theirs(inputs) - ours(inputs)).abs().max().item()

    def run(mixer):
        def forward():
            with torch.no_grad():
                mixer(inputs)

        return forward

    threads = torch.get_num_threads()
    forward = {}
    for count in sorted({1, threads}):  # one thread: the per-core comparison, least disturbed by other load
        torch.set_num_threads(count)
        forward[count] = fastest({"transformers": run(theirs), "specpatch": run(ours)}, args.repeats)
    torch.set_num_threads(threads)
    ours_fb = fastest({"specpatch": lambda: forward_backward(ours, inputs, grad_output)}, args.repeats)["specpatch"]
    result = {
        "shape": f"batch {args.mixer_batch}, {args.tokens} tokens, width {args.width}, d_state {args.d_state}, "
        f"expand {args.expand}",
        "threads": threads,
        "forward_s": {_threads(count): times for count, times in forward.items()},
        "forward_ratio": {
            _threads(count): times["transformers"] / times["specpatch"] for count, times in forward.items()
        },
        "specpatch_forward_backward_s": ours_fb,
        "max_abs_output_difference": max_diff,
    }
    if not args.skip_hf_backward:
        hf_times = []
        for _ in range(args.hf_backward_repeats):
            start = time.perf_counter()
            their_grad = forward_backward(theirs, inputs, grad_output)
            hf_times.append(time.perf_counter() - start)
        our_grad = forward_backward(ours, inputs, grad_output)
        result["transformers_forward_backward_s"] = min(hf_times)
        result["forward_backward_ratio"] = min(hf_times) / ours_fb
        result["max_abs_input_grad_difference"] = (their_grad - our_grad).abs().max().item()
    return result


def bench_model(args) -> dict:
    """Forward latency per Table II patching, rows interleaved until their spread is small; ratios to square-1212
    are medians of per-round ratios (noisy ones marked). Latency should grow with the patch count: `monotone`."""
    torch.manual_seed(0)
    models, inputs, patches = {}, {}, {}
    for name in TABLE_II_PRESETS:
        config = FFTPAuMConfig.from_size(args.size, preset=name, bimamba_type=args.bimamba_type, num_labels=NUM_LABELS)
        models[name] = FFTPAuMForAudioClassification(config).eval()
        inputs[name] = torch.randn(args.batch_size, config.max_length, config.num_mel_bins)
        patches[name] = config.num_patches

    def run(name):
        def forward():
            with torch.inference_mode():
                models[name](inputs[name])

        return forward

    ratios = {name: (name, "square-1212") for name in models if name != "square-1212"}
    times, to_square = interleaved(
        {name: run(name) for name in models}, ratios, min_rounds=args.model_repeats, max_rounds=args.max_rounds
    )
    rows = {}
    for name in models:
        ratio = to_square.get(name)
        rows[name] = {
            "patches": patches[name],
            "latency_s": times[name].median,
            "ratio_to_square": ratio.median if ratio else 1.0,
            "noisy": bool(times[name].noisy or (ratio is not None and ratio.noisy)),
            "spread": times[name].spread,
        }
    return rows


def mambapy_selective_scan(x, delta, A, B, C, D):
    """mambapy's selective scan (`mambapy.mamba.MambaBlock.selective_scan`: `exp`, the pure-PyTorch Blelloch
    `pscan` over full `(B, L, ED, N)` tensors, then `hs @ C`); the method uses nothing of its instance."""
    from mambapy.mamba import MambaBlock

    return MambaBlock.selective_scan(None, x, delta, A, B, C, D)


def bench_scan(args) -> dict:
    """Our selective scan vs mambapy's (PyPI `mambapy`, pure PyTorch), same inputs in mambapy's `(B, L, ED)` layout,
    at the mixer benchmark's shape and at the training-step shape; forward (no grad) and forward + backward."""
    try:
        import mambapy  # noqa: F401
    except ImportError:
        return {"skipped": "mambapy is not installed (pip install -e .[bench])"}
    shapes = {
        "long sequence": (args.mixer_batch, args.tokens, args.expand * args.width, args.d_state),
        "training batch": (args.step_batch, args.step_tokens, args.expand * args.step_width, args.d_state),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"threads": 1}
    for label, (batch, length, inner, d_state) in shapes.items():
        generator = torch.Generator().manual_seed(0)
        x, B, C = (torch.randn(batch, length, n, generator=generator) for n in (inner, d_state, d_state))
        delta = torch.rand(batch, length, inner, generator=generator) * 0.1
        A, D = -torch.rand(inner, d_state, generator=generator) * 3, torch.randn(inner, generator=generator)
        leaves = [t.requires_grad_() for t in (x, delta, A, B, C, D)]

        def ours(x, delta, A, B, C, D):
            t = [v.transpose(1, 2) for v in (x, delta, B, C)]
            return selective_scan_torch(t[0], t[1], A, t[2], t[3], D).transpose(1, 2)

        def forward(function, leaves=leaves):
            def run():
                with torch.no_grad():
                    function(*leaves)

            return run

        def forward_backward(function, leaves=leaves):
            return lambda: function(*leaves).sum().backward()

        with torch.no_grad():
            difference = (ours(*leaves) - mambapy_selective_scan(*leaves)).abs().max().item()
        functions = {
            "mambapy forward": forward(mambapy_selective_scan),
            "specpatch forward": forward(ours),
            "mambapy fwd+bwd": forward_backward(mambapy_selective_scan),
            "specpatch fwd+bwd": forward_backward(ours),
        }
        ratios = {"forward": ("mambapy forward", "specpatch forward"), "fwd+bwd": ("mambapy fwd+bwd", "specpatch fwd+bwd")}
        times, speedups = interleaved(functions, ratios, min_rounds=3, max_rounds=args.max_rounds)
        out[label] = {
            "shape": f"batch {batch}, {length} steps, {inner} channels, d_state {d_state}",
            "max_abs_difference": difference,
            "times": {k: v.as_dict() for k, v in times.items()},
            "speedups": {k: v.as_dict() for k, v in speedups.items()},
        }
    torch.set_num_threads(threads)
    return out


def bench_training_step(args) -> dict:
    """One training step (forward, cross-entropy, backward, AdamW) of FFTP-AuM and FFTP-AST of the same width, depth
    and patch count, side by side: 48 patches of 128 x 10 (time stride 2) from 104 frames, plus AuM's class token
    (AST adds its class and distillation tokens: 50 tokens), batch `--step-batch`, 35 classes."""
    common = {
        "hidden_size": args.step_width, "num_hidden_layers": args.step_layers, "patch_size": (128, 10),
        "time_stride": 2, "max_length": 104, "num_labels": 35,
    }  # fmt: skip
    torch.manual_seed(0)
    models = {
        "FFTP-AST": FFTPASTForAudioClassification(
            FFTPASTConfig(num_attention_heads=3, intermediate_size=4 * args.step_width, **common)
        ),
        "FFTP-AuM": FFTPAuMForAudioClassification(FFTPAuMConfig(bimamba_type=args.bimamba_type, **common)),
    }
    inputs = torch.randn(args.step_batch, 104, 128)
    labels = torch.randint(0, 35, (args.step_batch,))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}

    def step(name):
        def run():
            models[name](inputs, labels=labels).loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

        return run

    threads = torch.get_num_threads()
    out = {
        "setting": f"width {args.step_width}, {args.step_layers} layers, "
        f"{models['FFTP-AuM'].config.num_patches} patches, batch {args.step_batch}, {args.bimamba_type}"
    }
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        times, ratio = interleaved(
            {name: step(name) for name in models},
            {"AuM / AST": ("FFTP-AuM", "FFTP-AST")},
            min_rounds=5,
            max_rounds=args.max_rounds,
        )
        out[_threads(count)] = {
            "times": {k: v.as_dict() for k, v in times.items()},
            "ratio": ratio["AuM / AST"].as_dict(),
        }
    torch.set_num_threads(threads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each mixer measurement")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--model-repeats", type=int, default=3, help="timed runs of each FFTP-AuM configuration")
    parser.add_argument("--hf-backward-repeats", type=int, default=1)
    parser.add_argument("--skip-hf-backward", action="store_true", help="skip transformers' (slow) backward")
    parser.add_argument("--skip-model", action="store_true", help="only the mixer comparison")
    parser.add_argument("--mixer-batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--bimamba-type", default="fo-bi", choices=["fo-bi", "bi-bi"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-rounds", type=int, default=15, help="most interleaved rounds per measurement")
    parser.add_argument("--step-batch", type=int, default=64, help="training-step comparison: batch")
    parser.add_argument("--step-width", type=int, default=96, help="training-step comparison: width")
    parser.add_argument("--step-layers", type=int, default=4, help="training-step comparison: layers")
    parser.add_argument("--step-tokens", type=int, default=49, help="scan comparison, training shape: steps")
    parser.add_argument("--skip-step", action="store_true", help="skip the training-step and mambapy comparisons")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()  # transformers warns that it falls back to its slow path: that is the point
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    load_before = load_average()
    mixer = bench_mixer(args)
    print(f"\n1. One Mamba direction ({mixer['shape']}), PyTorch paths on CPU")
    print(f"   outputs agree to {mixer['max_abs_output_difference']:.1e} (max abs difference)")
    rows = [
        (f"forward, {key}", times["transformers"], times["specpatch"], mixer["forward_ratio"][key], 5)
        for key, times in mixer["forward_s"].items()
    ]
    if "forward_backward_ratio" in mixer:
        print(f"   input gradients agree to {mixer['max_abs_input_grad_difference']:.1e}")
        rows.append(
            (
                f"fwd + bwd, {_threads(mixer['threads'])}",
                mixer["transformers_forward_backward_s"],
                mixer["specpatch_forward_backward_s"],
                mixer["forward_backward_ratio"],
                20,
            )
        )
    print(f"   {'':<24}{'transformers':>14}{'specpatch':>12}{'speed-up':>10}{'target':>8}")
    for name, hf, ours, ratio, target in rows:
        print(f"   {name:<24}{hf * 1e3:>11.1f} ms{ours * 1e3:>9.1f} ms{ratio:>9.1f}x{target:>7}x")

    results = {"mixer": mixer, "load_average": {"before": load_before}}
    if not args.skip_step:
        scan = bench_scan(args)
        results["scan"] = scan
        print("\n3. Selective scan vs mambapy's pure-PyTorch pscan (`MambaBlock.selective_scan`), 1 thread")
        if "skipped" in scan:
            print(f"   skipped: {scan['skipped']}")
        for label, row in scan.items():
            if not isinstance(row, dict) or "speedups" not in row:
                continue
            print(f"   {label}: {row['shape']}; outputs agree to {row['max_abs_difference']:.1e}")
            for key, target in (("forward", 5), ("fwd+bwd", None)):
                stat, t = row["speedups"][key], row["times"]
                print(
                    f"   {key:<8} mambapy {t[f'mambapy {key}']['median'] * 1e3:8.1f} ms  specpatch "
                    f"{t[f'specpatch {key}']['median'] * 1e3:7.1f} ms  speed-up {stat['median']:5.1f}x"
                    f"{' (noisy)' if stat['noisy'] else ''}" + (f"  target >= {target}x" if target else "")
                )
        step = bench_training_step(args)
        results["training_step"] = step
        print(f"\n4. Training step (forward + backward + AdamW), FFTP-AuM vs FFTP-AST: {step['setting']}")
        for key, row in step.items():
            if not isinstance(row, dict):
                continue
            ratio = row["ratio"]
            print(
                f"   {key}: AST {row['times']['FFTP-AST']['median'] * 1e3:.0f} ms, AuM "
                f"{row['times']['FFTP-AuM']['median'] * 1e3:.0f} ms, AuM / AST {ratio['median']:.2f}x "
                f"(spread {ratio['spread']:.2f}{', noisy' if ratio['noisy'] else ''}; target <= 3x)"
            )
    if not args.skip_model:
        model = bench_model(args)
        results["model"] = model
        print(
            f"\n2. FFTP-AuM-{args.size} ({args.bimamba_type}) forward latency per Table II patching, "
            f"batch {args.batch_size} (medians of interleaved rounds)"
        )
        print(f"   {'configuration':<14}{'patches':>8}{'latency':>12}{'vs square':>11}")
        for name, row in model.items():
            noisy = " (noisy)" if row["noisy"] else ""
            print(
                f"   {name:<14}{row['patches']:>8}{row['latency_s'] * 1e3:>9.1f} ms"
                f"{row['ratio_to_square']:>10.3f}x{noisy}"
            )
    results["load_average"]["after"] = load_average()
    print(f"\nload average before / after: {load_before} / {results['load_average']['after']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
