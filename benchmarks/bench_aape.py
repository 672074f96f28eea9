# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""AaPE-ViT benchmark: patch-embedding parameter counts next to the paper's, and pre-training step throughput of the
standard vs the AaPE patch embedding at ViT-B width, measured side by side in one run.

    python benchmarks/bench_aape.py                       # counts + speed (ViT-B, 1 clip x 4 views, CPU)
    python benchmarks/bench_aape.py --counts-only
    python benchmarks/bench_aape.py --batch 2 --views 16 --repeats 5 --device cuda

A step is what `examples/pretrain_aape.py` does per batch minus the optimizer: forward (teacher once per clip on the
unmasked input, student on the visible tokens of every view, predictor, three losses), backward and the EMA teacher
update. Standard and AaPE steps run interleaved (`benchmarks/timing.py`), repeated until their spread is small; the
step ratio is the median of the per-round ratios, and a ratio that stays noisy is printed as such, not as a finding.
AaPE's overhead is `1 - 1 / ratio` = `(t_aape - t_standard) / t_aape`, the share of the AaPE step spent on the
aliasing-aware patch embedding (goal < 35 %).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved  # noqa: E402

from specpatch.configuration_aape_vit import AaPEViTConfig
from specpatch.modeling_aape_vit import AaPEViTEmbeddings, AaPEViTForPreTraining

PAPER_COUNTS = {"standard": 0.43e6, "aape_nonadaptive": 1.16e6, "aape": 1.86e6}


def print_counts() -> None:
    print("Patch-embedding parameters (class token excluded; position embeddings included), ViT-B, 8 x 38 patches")
    print(f"{'patch embedding':<18}{'measured':>12}{'paper':>10}{'ratio':>8}")
    for kind, paper in PAPER_COUNTS.items():
        count = AaPEViTEmbeddings(AaPEViTConfig(patch_embedding_type=kind)).num_patch_embedding_parameters()
        print(f"{kind:<18}{count:>12,}{paper / 1e6:>9.2f}M{count / paper:>8.3f}")
    model = AaPEViTForPreTraining(AaPEViTConfig(num_views=2))
    encoder = sum(p.numel() for p in model.aape_vit.parameters())
    predictor = sum(p.numel() for p in model.predictor.parameters() if p.requires_grad)
    print(f"{'encoder (AaPE)':<18}{encoder:>12,}{87:>9.2f}M{encoder / 87e6:>8.3f}   (Table III: 87M)")
    print(f"{'predictor':<18}{predictor:>12,}{10.63:>9.2f}M{predictor / 10.63e6:>8.3f}   (Table VIII, trainable)")
    print()


def make_model(kind: str, views: int, device: torch.device) -> AaPEViTForPreTraining:
    torch.manual_seed(0)
    return AaPEViTForPreTraining(AaPEViTConfig(patch_embedding_type=kind, num_views=views)).to(device).train()


def step(model: AaPEViTForPreTraining, inputs: torch.Tensor, generator: torch.Generator) -> None:
    output = model(inputs, generator=generator)
    output.loss.backward()
    model.update_teacher(1, 100)
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="clips per step")
    parser.add_argument("--views", type=int, default=4, help="masked views per clip (the paper: 16, inferred)")
    parser.add_argument("--repeats", type=int, default=3, help="least timed steps per model (after one warm-up step)")
    parser.add_argument("--max-rounds", type=int, default=8, help="most interleaved rounds")
    parser.add_argument("--frames", type=int, default=608)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", default="standard,aape", help="comma-separated patch embedding types")
    parser.add_argument("--counts-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print_counts()
    if args.counts_only:
        return
    device = torch.device(args.device)
    kinds = args.kinds.split(",")
    models = {kind: make_model(kind, args.views, device) for kind in kinds}
    inputs = torch.randn(args.batch, args.frames, 128, device=device)
    grid = models[kinds[0]].aape_vit.embeddings.grid_for(args.frames)
    tokens = grid[0] * grid[1]
    visible = tokens - round(0.8 * tokens)
    seeds = itertools.count()
    functions = {kind: (lambda kind=kind: step(models[kind], inputs, torch.Generator().manual_seed(next(seeds))))
                 for kind in kinds}  # fmt: skip
    ratios = {f"{kind} / standard": (kind, "standard") for kind in kinds if kind != "standard" and "standard" in kinds}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times, ratio_stats = interleaved(
        functions, ratios, min_rounds=args.repeats, max_rounds=max(args.repeats, args.max_rounds), budget_s=600,
        synchronize=sync,
    )  # fmt: skip

    print(
        f"Pre-training step (forward + backward + EMA update), ViT-B, {args.batch} clip(s) x {args.views} views, "
        f"{args.frames} frames = {tokens} patches, {visible} visible per view, device {device}, "
        f"{torch.get_num_threads()} threads, median of {times[kinds[0]].rounds} interleaved rounds"
    )
    print(f"{'patch embedding':<18}{'step s':>9}{'clips/s':>9}{'patch tokens/s':>16}{'student tokens/s':>18}")
    for kind in kinds:
        seconds = times[kind].median
        print(
            f"{kind:<18}{seconds:>9.3f}{args.batch / seconds:>9.2f}{args.batch * tokens / seconds:>16.1f}"
            f"{args.batch * args.views * visible / seconds:>18.1f}"
        )
    for name, ratio in ratio_stats.items():
        kind = name.split(" / ")[0]
        overhead = 1 - 1 / ratio.median
        verdict = "OK" if overhead < 0.35 else "ABOVE GOAL"
        noisy = f" (noisy, spread {ratio.spread:.2f}: not a finding)" if ratio.noisy else ""
        print(
            f"{kind} overhead: {100 * overhead:.1f} % of its step time "
            f"(step time x{ratio.median:.2f}; goal < 35 %: {verdict}){noisy}"
        )


if __name__ == "__main__":
    main()
