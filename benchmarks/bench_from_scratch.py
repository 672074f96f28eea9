"""From-scratch training at small width: our models against a minimal reference ViT (FFTP paper, Table I direction).

One run trains every row with the same budget (steps x batch), optimiser, schedule, data order and features on the
offline spoken-keyword task (benchmarks/keyword_task.py: 35 words, held-out speakers, noise), and prints the
held-out accuracy side by side:

- `reference-vit`: a minimal ViT written here in plain PyTorch modules (`nn.TransformerEncoderLayer`, PyTorch's
  default initialisation) with the same FFTP patch stem: what a user would write instead of using specpatch.
- `fftp-ast`, `square-ast`: our FFTPASTForAudioClassification with full-frequency patches and with AST's 16 x 16
  square patches (stride 10), both without masking (Table I rows 1-2).
- `fftp-ast+specaugment`, `fftp-ast+specmask`: FFTP with the paper's Speech Commands masking (Table I rows 3-4).
- `reference-vit(square)`: the same minimal ViT with AST's square patches (square-ast's reference; is a gap to FFTP
  the patching's?).
- `fftp-ast(vit-init)`: ours with `initializer_scheme="vit"` (truncated normal 0.02 everywhere, the old default).
- `fftp-ast(no-dist)`, `square-ast(no-dist)` (by `--rows` only): ours with `use_distillation_token=False`, the class
  token alone as in the minimal ViT, instead of AST's class and distillation tokens.
- `--extended` adds `reference-aum` (a minimal bidirectional AuM from mambapy's pure-PyTorch blocks, PyTorch /
  mambapy default initialisation), `fftp-aum`, `fftp-aum+specmask`, `aape-vit` (standard and AaPE patch embedding) and
  `reference-vit(16x16)`, the minimal ViT with AaPE-ViT's non-overlapping 16 x 16 patches (its reference).

Targets (issue 10): ours within 2 points of the reference, FFTP above square, SpecMask above SpecAugment; each
preset against its own minimal reference where both rows run (square AST, and with `--extended` FFTP-AuM and AaPE-ViT).

The default budget is the paper's in epochs: 1,100 steps x 64 = 21 epochs of the 3,360 training clips (Table I trains
20 epochs). Shorter runs compare models before they have learned: at 600 steps (11 epochs) the square-patch models
are still leaving a plateau at chance, and masking has not paid off yet (both rows of that budget below).

Measured here (2-core CPU, 1 thread per run, two processes at a time, 35 words; per-seed accuracies in %, then the
mean over the seeds):

- Default budget (1,100 steps), seeds 0-3: reference-vit 89.0 / 88.2 / 90.0 / 89.4 (89.15), fftp-ast 91.2 / 91.0 /
  90.1 / 91.3 (90.9): ours +1.75 points (+2.2 / +2.8 / +0.1 / +1.9 per seed), target met. fftp-ast(vit-init) 87.6 /
  87.1 / 89.2 / 87.7 (87.9, the old truncated-normal default: 3.0 points under ours).
  fftp-ast+specaugment 90.7 / 90.0 / 91.3 / 90.1 (90.5), fftp-ast+specmask 91.9 / 90.6 / 91.0 / 91.5 (91.25):
  SpecMask - SpecAugment = +1.2 / +0.6 / -0.3 / +1.4, +0.7 +- 0.8 (3 of 4 seeds); SpecMask - no masking +0.35
  (SpecAugment -0.4). SpecMask then changed its random stream (a SplitMix64 stream in the compiled placement loop
  instead of a numpy PCG64 Generator per batch: same distribution of masks, other masks for a given seed):
  fftp-ast+specmask 89.2 / 90.4 / 90.2 / 92.4 (90.55), SpecMask - SpecAugment = -1.5 / +0.4 / -1.1 / +2.3, +0.05 +-
  1.7 (2 of 4 seeds); fftp-ast and fftp-ast+specaugment, rerun after that change, gave their seed-0 figures again
  exactly (91.2, 90.7). Read together: the two maskings are within the seed spread of each other at this budget (the
  paper's +2.2 points on Speech Commands, Table I, is not resolved at this scale), and neither beats no masking by
  more than the spread.
  square-ast 54.2 / 58.6 / 52.0 / 59.4 (56.05), reference-vit(square) 54.9 / 55.0 / 43.6 / 53.6 (51.8): ours - the
  minimal ViT with the same square patches = -0.7 / +3.6 / +8.4 / +5.8, +4.3 on average, target met; FFTP above
  square by 35 points. square-ast(no-dist) (class token only, `use_distillation_token=False`) 54.8 / 48.1 / 52.5 /
  48.2 (50.9): at this budget AST's distillation token helps (+5.2), so the AST layout stays the default.
- At 600 steps (11 epochs), seeds 0-2 unless noted: reference-vit 85.6 / 86.1 / 88.1 (86.6), fftp-ast 88.5 / 87.9 /
  86.3 (87.6): +1.0. fftp-ast(vit-init) 73.8 (seed 0). fftp-ast+specaugment 84.8 / 86.7 / 86.3 (85.9),
  fftp-ast+specmask 85.2 / 84.3 / 88.0 (85.8): no measurable difference, and both cost about 1.7 points against no
  masking at this budget. Square patches, seeds 0-3: square-ast 17.5 / 24.3 / 20.6 / 16.8 (19.8), square-ast(no-dist)
  29.5 / 25.6 / 17.0 / 21.5 (23.4), reference-vit(square) 34.4 / 27.0 / 21.0 / 22.4 (26.2). All three sit at chance
  (loss ln 35 = 3.56) for the first 150-250 steps and only learn once they leave that plateau, so at this budget the
  result mostly says when that happened (the seed); the 1,100-step rows above are the comparison. Ablations on the
  way (300 steps, paired runs that copy square-ast's initial weights into a plain-PyTorch model reproducing its run
  bit for bit, one AST difference removed at a time): class token only gives a lower loss on the plateau; tokens
  starting at zero, or no second LayerNorm in the head, change nothing measurable; the stem, attention, MLP,
  LayerNorm and position-embedding initialisations have the reference's statistics. Position embeddings initialised
  with 2-D sine-cosine values (scaled 1 or 0.1; learned; seeds 0-1, 600 steps) gave 29.5 / 22.1 and 27.4 with the AST
  layout and 25.6 / 29.8 and 21.9 without the distillation token: within the seed spread, not adopted.
- Extended rows (600 steps, seed 0 unless noted): reference-aum 74.4 (669 s), fftp-aum 76.8 / 79.8 (seeds 0 / 1, 172 s; 94 s with
  the row-wise scan kernels, again 76.8 on seed 0), fftp-aum+specmask 82.6. FFTP-AuM is as good as the minimal mambapy
  AuM; both trail the ViT reference by ~8 points while fitting the training set as well or better (final loss 0.07 vs
  0.09): the Mamba architecture generalises less to held-out speakers at this size and budget. Init ablations of
  fftp-aum (seed 0) stay within the seed spread: `initializer_scheme="vit"` (truncated normal 0.02 for stem and head,
  zero biases; AuM's head init) 80.0, no `sqrt(layers)` rescale of the output projections 79.3.
- reference-vit(16x16) 17.9, aape-vit(standard) 31.2, aape-vit(aape) 66.1 (seed 0): with AaPE-ViT's
  non-overlapping 16 x 16 patches the standard stem (fixed sin-cos positions) beats the minimal ViT (learned
  positions), and the AaPE stem (aliasing-aware SBLU tokens) more than doubles it.
- Extended rows at the default budget (1,100 steps, seed 0): fftp-aum 87.6 (198 s), reference-aum 79.5 (1,281 s):
  ours +8.1 points; reference-vit(16x16) 43.6, aape-vit(standard) 42.7: -0.9 points, within the 2-point target (the
  standard stem's head start at 600 steps is gone once both have trained).

    python benchmarks/bench_from_scratch.py                  # ~30 min on 2 cores (the square rows ~9 min each)
    python benchmarks/bench_from_scratch.py --seeds 0 1 2    # mean over seeds
    python benchmarks/bench_from_scratch.py --extended       # + AuM / AaPE rows, ~50 min more (reference-aum ~20)
    python benchmarks/bench_from_scratch.py --steps 600      # the shorter budget of the rows above
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keyword_task import make_keyword_task  # noqa: E402

from specpatch import (  # noqa: E402
    AaPEViTConfig,
    AaPEViTForAudioClassification,
    FFTPASTConfig,
    FFTPASTForAudioClassification,
    FFTPAuMConfig,
    FFTPAuMForAudioClassification,
    SpecAugment,
    SpecMask,
    SpecPatchFeatureExtractor,
)

NUM_FRAMES = 128  # the papers' Speech Commands input: 128 frames x 128 mel bins
NUM_MEL = 128


class ReferenceViT(nn.Module):
    """A minimal ViT in plain PyTorch with PyTorch's default initialisation (the baseline a user would write)."""

    def __init__(self, num_labels, width, depth, heads, mlp, patch, stride):
        super().__init__()
        self.stem = nn.Conv2d(1, width, patch, stride)
        grid = ((NUM_MEL - patch[0]) // stride[0] + 1) * ((NUM_FRAMES - patch[1]) // stride[1] + 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, grid + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_labels)

    def forward(self, input_values):  # (batch, frames, mel)
        x = self.stem(input_values.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


class ReferenceAuM(nn.Module):
    """A minimal bidirectional Audio Mamba built from mambapy's pure-PyTorch Mamba blocks with their own default
    initialisation (what a user would write with the peer library): the same patch stem, a class token in the middle
    of the sequence (AuM), pre-norm residual blocks `x + fwd(RMSNorm(x)) + flip(bwd(flip(RMSNorm(x))))` (two
    independent `MambaBlock`s per layer, Vim's bidirectional sum), final RMSNorm, linear head on the class token."""

    def __init__(self, num_labels, width, depth, patch, stride):
        super().__init__()
        try:
            from mambapy.mamba import MambaBlock, MambaConfig, RMSNorm
        except ImportError as error:
            raise ImportError("The reference-aum row needs mambapy: pip install -e .[bench]") from error

        config = MambaConfig(d_model=width, n_layers=depth)
        self.stem = nn.Conv2d(1, width, patch, stride)
        grid = ((NUM_MEL - patch[0]) // stride[0] + 1) * ((NUM_FRAMES - patch[1]) // stride[1] + 1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, grid + 1, width) * 0.02)
        self.norms = nn.ModuleList(RMSNorm(width, config.rms_norm_eps) for _ in range(depth))
        self.forward_blocks = nn.ModuleList(MambaBlock(config) for _ in range(depth))
        self.backward_blocks = nn.ModuleList(MambaBlock(config) for _ in range(depth))
        self.norm = RMSNorm(width, config.rms_norm_eps)
        self.head = nn.Linear(width, num_labels)

    def forward(self, input_values):  # (batch, frames, mel)
        x = self.stem(input_values.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
        middle = x.shape[1] // 2
        x = torch.cat([x[:, :middle], self.cls_token.expand(len(x), -1, -1), x[:, middle:]], dim=1) + self.pos
        for norm, forward_block, backward_block in zip(self.norms, self.forward_blocks, self.backward_blocks):
            h = norm(x)
            x = x + forward_block(h) + backward_block(h.flip(1)).flip(1)
        return self.head(self.norm(x)[:, middle])


def build_model(row: str, num_labels: int, args) -> nn.Module:
    width, depth, heads = args.width, args.depth, args.heads
    common = dict(hidden_size=width, num_hidden_layers=depth, num_labels=num_labels, max_length=NUM_FRAMES)
    fftp = dict(patch_size=(NUM_MEL, args.patch_time), frequency_stride=NUM_MEL, time_stride=args.time_stride)
    name = row.split("+")[0]
    if name == "reference-vit":
        return ReferenceViT(num_labels, width, depth, heads, 4 * width, (NUM_MEL, args.patch_time),
                            (NUM_MEL, args.time_stride))  # fmt: skip
    if name == "reference-vit(square)":
        return ReferenceViT(num_labels, width, depth, heads, 4 * width, (16, 16), (10, 10))
    if name == "reference-vit(16x16)":  # AaPE-ViT's patching: 16 x 16 patches, no overlap
        return ReferenceViT(num_labels, width, depth, heads, 4 * width, (16, 16), (16, 16))
    if name in ("fftp-ast", "fftp-ast(vit-init)", "square-ast", "fftp-ast(no-dist)", "square-ast(no-dist)"):
        square = name.startswith("square-ast")
        patching = fftp if not square else dict(patch_size=16, frequency_stride=10, time_stride=10)
        extra = {"initializer_scheme": "vit"} if name == "fftp-ast(vit-init)" else {}
        if name.endswith("(no-dist)"):  # class token only, as the minimal ViT (`use_distillation_token=False`)
            extra["use_distillation_token"] = False
        config = FFTPASTConfig(**common, **patching, num_attention_heads=heads, intermediate_size=4 * width, **extra)
        return FFTPASTForAudioClassification(config)
    if name == "reference-aum":
        return ReferenceAuM(num_labels, width, depth, (NUM_MEL, args.patch_time), (NUM_MEL, args.time_stride))
    if name == "fftp-aum":
        return FFTPAuMForAudioClassification(FFTPAuMConfig(**common, **fftp))
    if name.startswith("aape-vit"):
        embedding = "aape" if name == "aape-vit(aape)" else "standard"
        config = AaPEViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                               intermediate_size=4 * width, num_labels=num_labels, max_length=NUM_FRAMES,
                               patch_embedding_type=embedding)  # fmt: skip
        return AaPEViTForAudioClassification(config)
    raise ValueError(f"unknown row {row!r}")


def build_masking(row: str):
    if row.endswith("+specmask"):
        return SpecMask(**SpecMask.SPEECH_COMMANDS)  # budget 1,024, max 128 x 16
    if row.endswith("+specaugment"):
        return SpecAugment(freq_mask_param=5, time_mask_param=15)  # the paper's FFTP Speech Commands setting
    return None


def features(audio: np.ndarray, extractor, batch: int = 256) -> torch.Tensor:
    out = [extractor(list(audio[i : i + batch]), sampling_rate=16000, return_tensors="pt")["input_values"]
           for i in range(0, len(audio), batch)]  # fmt: skip
    return torch.cat(out)


def logits_of(model, x):
    out = model(input_values=x)
    return out if isinstance(out, torch.Tensor) else out.logits


def train_and_evaluate(row, seed, data, args):
    train_x, train_y, test_x, test_y, num_labels = data
    torch.manual_seed(seed)
    model = build_model(row, num_labels, args)
    masking = build_masking(row)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    warmup = max(1, int(0.1 * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup)))
    )  # fmt: skip
    order = torch.Generator().manual_seed(1000 + seed)  # same data order and masks for every row of a seed
    mask_generator = torch.Generator().manual_seed(2000 + seed)
    start = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        index = torch.randint(len(train_x), (args.batch_size,), generator=order)
        x = train_x[index]
        if masking is not None:
            x = masking(x, generator=mask_generator)
        loss = nn.functional.cross_entropy(logits_of(model, x), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    train_time = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([logits_of(model, test_x[i : i + 256]).argmax(-1) for i in range(0, len(test_x), 256)])
    return (predictions == test_y).float().mean().item() * 100, loss.item(), train_time


DEFAULT_ROWS = ["reference-vit", "fftp-ast", "fftp-ast(vit-init)", "square-ast", "reference-vit(square)",
                "fftp-ast+specaugment", "fftp-ast+specmask"]  # fmt: skip
EXTENDED_ROWS = ["reference-aum", "fftp-aum", "fftp-aum+specmask", "reference-vit(16x16)", "aape-vit(standard)",
                 "aape-vit(aape)"]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", help=f"Rows to train (default: {' '.join(DEFAULT_ROWS)}).")
    parser.add_argument("--extended", action="store_true", help=f"Also {' '.join(EXTENDED_ROWS)}.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1100, help="Training steps (1,100 x 64 = 21 epochs, the paper's 20).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch_time", type=int, default=10, help="FFTP patch: 128 mel x this many frames.")
    parser.add_argument("--time_stride", type=int, default=4, help="FFTP time stride (30 patches on 128 frames).")
    parser.add_argument("--num_words", type=int, default=35)
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (1 is fastest on a shared machine).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = args.rows or DEFAULT_ROWS + (EXTENDED_ROWS if args.extended else [])

    task = make_keyword_task(num_words=args.num_words)
    raw = SpecPatchFeatureExtractor(max_length=NUM_FRAMES, do_normalize=False)
    train_raw = features(task.train_audio, raw)
    mean, std = train_raw.mean().item(), train_raw.std().item()  # AST's normalisation, training-set statistics
    norm = lambda x: (x - mean) / (2 * std)  # noqa: E731
    data = (norm(train_raw), torch.as_tensor(task.train_labels), norm(features(task.test_audio, raw)),
            torch.as_tensor(task.test_labels), task.num_labels)  # fmt: skip
    print(f"keyword task: {len(task.train_audio)} train clips ({len(set(task.train_speakers))} speakers), "
          f"{len(task.test_audio)} test clips ({len(set(task.test_speakers))} held-out speakers), {task.num_labels} "
          f"words; {args.steps} steps x {args.batch_size}, AdamW lr {args.learning_rate}, width {args.width}, "
          f"depth {args.depth}; chance {100 / task.num_labels:.1f} %; load {os.getloadavg()[0]:.1f}", flush=True)

    results = {row: [] for row in rows}
    for seed in args.seeds:  # seeds outermost: every row of a seed sees the same batches and masks
        for row in rows:
            accuracy, loss, seconds = train_and_evaluate(row, seed, data, args)
            results[row].append(accuracy)
            print(f"  seed {seed} {row:24s} accuracy {accuracy:5.1f} %  final loss {loss:.3f}  {seconds:6.1f} s",
                  flush=True)  # fmt: skip

    print(f"\n| row | held-out accuracy (%), mean over seeds {args.seeds} |\n|---|---|")
    mean_of = {row: float(np.mean(v)) for row, v in results.items()}
    for row in rows:
        spread = f" (+- {np.std(results[row]):.1f})" if len(results[row]) > 1 else ""
        print(f"| {row} | {mean_of[row]:.1f}{spread} |")
    checks = []
    if "reference-vit" in mean_of and "fftp-ast" in mean_of:
        gap = mean_of["fftp-ast"] - mean_of["reference-vit"]
        checks.append(f"fftp-ast - reference-vit = {gap:+.1f} points (target >= -2): {'PASS' if gap >= -2 else 'FAIL'}")
    if "square-ast" in mean_of and "fftp-ast" in mean_of:
        gap = mean_of["fftp-ast"] - mean_of["square-ast"]
        checks.append(f"fftp-ast - square-ast = {gap:+.1f} points (target > 0): {'PASS' if gap > 0 else 'FAIL'}")
    if "fftp-ast+specmask" in mean_of and "fftp-ast+specaugment" in mean_of:
        gap = mean_of["fftp-ast+specmask"] - mean_of["fftp-ast+specaugment"]
        checks.append(f"specmask - specaugment = {gap:+.1f} points (target > 0): {'PASS' if gap > 0 else 'FAIL'}")
    for ours, reference in (("square-ast", "reference-vit(square)"), ("fftp-aum", "reference-aum"),
                            ("aape-vit(standard)", "reference-vit(16x16)")):  # fmt: skip
        if ours in mean_of and reference in mean_of:  # each preset against its own minimal reference, where both ran
            gap = mean_of[ours] - mean_of[reference]
            checks.append(f"{ours} - {reference} = {gap:+.1f} points (target >= -2): {'PASS' if gap >= -2 else 'FAIL'}")
    for line in checks:
        print(line)
    return results


if __name__ == "__main__":
    main()
