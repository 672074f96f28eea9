"""FFTP-AST efficiency per Table II patching: patches, GMACs and CPU latency relative to the square baseline.

GMACs are measured with `torch.utils.flop_counter.FlopCounterMode` on a ViT-B (768 wide, 12 layers) forward, in two
columns:
  * "paper": the FFTP paper's convention (Table III), linear layers and the patch convolution only;
  * "full": the same plus attention's two matrix products. The counter has no formula for CPU SDPA kernels, so the
    count runs the model's eager attention path, whose products are plain batched matmuls.
Latency rows run interleaved in this process and are repeated until their spread is small (`benchmarks/timing.py`);
each is reported as a ratio to the square (1212-patch) configuration (median of per-round ratios, marked noisy if it
stays spread out), so the figures compare on any machine. The square configuration is also timed against transformers'
`ASTForAudioClassification` carrying the same weights.

    python benchmarks/bench_patching.py [--repeats 5] [--batch-size 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from timing import interleaved, load_average
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


def time_models(models: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], repeats: int, max_rounds: int):
    """Latency of each model and its ratio to square-1212 (median of per-round ratios), rows interleaved and
    repeated until their spread is small (`benchmarks/timing.py`)."""

    def run(name):
        def forward():
            with torch.inference_mode():
                models[name](inputs[name])

        return forward

    ratios = {name: (name, "square-1212") for name in models if name != "square-1212"}
    return interleaved({name: run(name) for name in models}, ratios, min_rounds=repeats, max_rounds=max_rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="minimum interleaved rounds")
    parser.add_argument("--max-rounds", type=int, default=15)
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

    load_before = load_average()
    times, to_square = time_models(models, inputs, args.repeats, args.max_rounds)
    print(f"# FFTP-AST patch configurations, ViT-B, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    print("| patching | patches | GMACs (linear+conv) | GMACs (with attention) | latency vs square |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        name = row["config"]
        ratio = to_square.get(name)
        row["latency_s"] = times[name].median
        row["speedup_vs_square"] = 1 / ratio.median if ratio else 1.0
        row["noisy"] = bool(times[name].noisy or (ratio is not None and ratio.noisy))
        print(
            f"| {name} | {row['patches']} | {row['gmacs_paper']:.2f} | {row['gmacs_full']:.2f} "
            f"| {row['speedup_vs_square']:.2f}x faster{' (noisy)' if row['noisy'] else ''} |"
        )
    ratio_ast = to_square["transformers-AST"].median
    speedup_248 = 1 / to_square["fftp-248"].median
    noisy = {"transformers_ast": to_square["transformers-AST"].noisy, "fftp248": to_square["fftp-248"].noisy}
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
                {
                    "rows": rows,
                    "transformers_ast_time_ratio": ratio_ast,
                    "fftp248_speedup": speedup_248,
                    "noisy": noisy,
                    "load_average": {"before": load_before, "after": load_average()},
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
