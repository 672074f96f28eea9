"""CPU latency of FFTP-AST (fftp-248, ViT-B width) in torch eager, torch.compile and onnxruntime, in one run.

The model is the FFTP paper's 248-patch configuration (128 x 10 patches, time stride 4, 1000 frames) at ViT-B width
(768 wide, 12 layers, 527 AudioSet labels), randomly initialised (latency does not depend on the weights). The three
runtimes get the same input and the same number of threads:

  * torch eager: `model(input_values).logits` under `torch.inference_mode()` (SDPA attention);
  * torch.compile: `torch.compile(model)` with the default inductor backend (compile time reported separately);
    skipped with the reason printed if compilation fails;
  * onnxruntime: the graph of `specpatch.export_onnx` (torch.onnx dynamo exporter, dynamic batch), CPU execution
    provider, all graph optimisations, `intra_op_num_threads` = the torch thread count. The export's own parity check
    (logits within 1e-4 of PyTorch) runs first and its largest difference is printed.

Latency is measured round-robin with the order alternating between repeats; the table reports the fastest and the
median run of each, and ratios to eager (> 1 = faster than eager), so the figures compare on any machine.

    python benchmarks/bench_export.py [--repeats 10] [--batch-size 1] [--threads N] [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from specpatch import FFTPASTConfig, FFTPASTForAudioClassification, export_onnx
from specpatch.export import check_onnx

VIT_B = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
NUM_LABELS = 527


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()

    import onnxruntime

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = FFTPASTConfig.from_preset("fftp-248", num_labels=NUM_LABELS, **VIT_B)
    model = FFTPASTForAudioClassification(config).eval()
    inputs = torch.randn(args.batch_size, config.max_length, config.num_mel_bins)
    print(
        f"FFTP-AST fftp-248 ViT-B ({config.num_patches} patches, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters), batch {args.batch_size}, {threads} threads, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {platform.processor() or platform.machine()}"
    )

    runners = {}
    with torch.inference_mode():
        runners["torch eager"] = lambda: model(inputs).logits
        expected = runners["torch eager"]()

    results = {"threads": threads, "batch_size": args.batch_size}
    if not args.no_compile:
        compiled = torch.compile(model)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                got = compiled(inputs).logits
            results["compile_seconds"] = time.perf_counter() - start
            results["compile_max_abs_diff"] = float((got - expected).abs().max())
            print(f"torch.compile: compiled in {results['compile_seconds']:.1f} s, "
                  f"max |logits - eager| = {results['compile_max_abs_diff']:.2e}")

            def run_compiled():
                with torch.inference_mode():
                    return compiled(inputs).logits

            runners["torch.compile"] = run_compiled
        except Exception as err:  # noqa: BLE001 - report and go on with the other runtimes
            print(f"torch.compile: failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); skipped")
            results["compile_error"] = f"{type(err).__name__}: {err}"[:500]

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "fftp_ast_248.onnx")
        start = time.perf_counter()
        export_onnx(model, path)
        results["export_seconds"] = time.perf_counter() - start
        results["onnx_max_abs_diff"] = check_onnx(model, path, batch_sizes=(args.batch_size,))
        print(f"onnx export: {results['export_seconds']:.1f} s, max |logits - eager| = {results['onnx_max_abs_diff']:.2e}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"input_values": inputs.numpy()}
        runners["onnxruntime"] = lambda: session.run(["logits"], feed)[0]

        times = {name: [] for name in runners}
        for run in runners.values():  # warm-up
            for _ in range(2):
                run()
        for repeat in range(args.repeats):
            order = list(runners.items()) if repeat % 2 == 0 else list(runners.items())[::-1]
            for name, run in order:
                with torch.inference_mode():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)

    eager_best = min(times["torch eager"])
    eager_median = statistics.median(times["torch eager"])
    print(f"\n{'runtime':<15}{'best ms':>10}{'median ms':>12}{'eager/x (best)':>17}{'eager/x (median)':>19}")
    results["latency"] = {}
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        results["latency"][name] = {"best_ms": best * 1e3, "median_ms": median * 1e3,
                                    "speedup_best": eager_best / best, "speedup_median": eager_median / median}
        print(f"{name:<15}{best * 1e3:>10.1f}{median * 1e3:>12.1f}{eager_best / best:>17.2f}{eager_median / median:>19.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=float)


if __name__ == "__main__":
    main()
