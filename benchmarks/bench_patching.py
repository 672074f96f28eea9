"""FFTP-AST efficiency per Table II patching: patches, GMACs and CPU latency relative to the square baseline.

GMACs are measured with `torch.utils.flop_counter.FlopCounterMode` on a ViT-B (768 wide, 12 layers) forward, in two
columns:
  * "paper": the FFTP paper's convention (Table III), linear layers and the patch convolution only;
  * "full": the same plus attention's two matrix products. The counter has no formula for CPU SDPA kernels, so the
    count runs the model's eager attention path, whose products are plain batched matmuls.
Latency is the fastest of interleaved runs in this process (the minimum is the figure least disturbed by other
load on the machine), reported as a ratio to the square (1212-patch)
configuration, so the figures compare on any machine. The square configuration is also timed against transformers'
`ASTForAudioClassification` carrying the same weights.

    python benchmarks/bench_patching.py [--repeats 5] [--batch-size 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ASTConfig, ASTForAudioClassification

from specpatch import FFTPASTConfig, FFTPASTForAudioClassification
from specpatch.configuration_patching import TABLE_II_PRESETS

VIT_B = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
NUM_LABELS = 527


def count_gmacs(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    """(linear + conv GMACs, GMACs including attention's matmuls) of one forward, per clip."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(inputs, output_attentions=True)
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    total = sum(by_op.values())
    attention = sum(flops for op, flops in by_op.items() if "bmm" in op)
    batch = inputs.shape[0]
    return (total - attention) / 2e9 / batch, total / 2e9 / batch


def time_models(models: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], repeats: int) -> dict:
    """Fastest latency of each model, measured round-robin so that machine noise affects all alike."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            model(inputs[name])
        for repeat in range(repeats):
            # alternate the order so that no model always runs right after the same neighbour
            order = list(models.items()) if repeat % 2 == 0 else list(models.items())[::-1]
            for name, model in order:
                start = time.perf_counter()
                model(inputs[name])
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default); 1 is steadiest on a busy machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    models, inputs, rows = {}, {}, []
    for name, preset in TABLE_II_PRESETS.items():
        config = FFTPASTConfig.from_preset(name, num_labels=NUM_LABELS, **VIT_B)
        models[name] = FFTPASTForAudioClassification(config).eval()
        inputs[name] = torch.randn(args.batch_size, preset["max_length"], 128)
        paper, full = count_gmacs(models[name], inputs[name][:1])
        rows.append({"config": name, "patches": config.num_patches, "gmacs_paper": paper, "gmacs_full": full})

    # transformers' AST with the weights of our square model (converted the other way round: AST -> ours is the
    # tested direction, so build AST first and load our model from it).
    ast_config = ASTConfig(num_labels=NUM_LABELS, **VIT_B)
    ast = ASTForAudioClassification(ast_config).eval()
    models["square-1212"] = FFTPASTForAudioClassification.from_ast(ast).eval()
    models["transformers-AST"] = ast
    inputs["transformers-AST"] = inputs["square-1212"]
    with torch.no_grad():
        difference = (models["square-1212"](inputs["square-1212"]).logits - ast(inputs["square-1212"]).logits).abs()

    latency = time_models(models, inputs, args.repeats)
    square = latency["square-1212"]
    print(f"# FFTP-AST patch configurations, ViT-B, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| patching | patches | GMACs (linear+conv) | GMACs (with attention) | latency vs square |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        row["latency_s"] = latency[row["config"]]
        row["speedup_vs_square"] = square / latency[row["config"]]
        print(
            f"| {row['config']} | {row['patches']} | {row['gmacs_paper']:.2f} | {row['gmacs_full']:.2f} "
            f"| {row['speedup_vs_square']:.2f}x faster |"
        )
    ratio_ast = latency["transformers-AST"] / square
    speedup_248 = square / latency["fftp-248"]
    gmac_ratio_248 = rows[0]["gmacs_paper"] / next(r for r in rows if r["config"] == "fftp-248")["gmacs_paper"]
    print(
        f"\nsquare FFTP-AST vs transformers AST (same weights, max |logit diff| {difference.max():.1e}): "
        f"transformers takes {ratio_ast:.2f}x our time ({'ours not slower' if ratio_ast >= 0.97 else 'OURS SLOWER'})"
    )
    print(
        f"fftp-248 vs square-1212: {speedup_248:.2f}x faster (goal >= 4.5x; linear-layer GMACs ratio {gmac_ratio_248:.2f}x)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": rows, "transformers_ast_time_ratio": ratio_ast, "fftp248_speedup": speedup_248}, f, indent=2
            )


if __name__ == "__main__":
    main()
