"""Feature extraction speed: transformers' `ASTFeatureExtractor` against `SpecPatchFeatureExtractor` on CPU.

A batch of 32 ten-second clips at 16 kHz (noise, tones and chirps) goes through both extractors in this process, on
the same audio, with torch's default number of threads. `ASTFeatureExtractor` uses torchaudio's Kaldi fbank when
torchaudio is installed and otherwise transformers' per-frame numpy `spectrogram`: the script measures the path this
environment gives a user and prints which (the project does not depend on torchaudio, so numpy is the usual one);
ours computes the same features as one batched torch graph. The extractors run interleaved, repeated until the
spread is small (`benchmarks/timing.py`); the speed-up is the median of per-round ratios, marked noisy if it stays
spread out, with the largest absolute difference between the two outputs. The AaPE log-mel front end is timed too.

Each timed call starts once no thread of the process burns CPU (`timing.settle`, untimed; `--no-settle` to skip):
after every `ASTFeatureExtractor` call numpy's OpenBLAS threads (its mel matrix product, 2 threads) spin for about
0.1 s of one core (measured: 91-100 ms of CPU burnt in the half second after a call, 0.1-9 ms with
`OPENBLAS_NUM_THREADS=1`), and torch's OpenMP threads for ~10 ms after a parallel op. Without the wait, the row timed
right after AST ran on one core for its first 0.1 s: our extractor took 87-115 ms after AST against 44-67 ms back to
back, which was the "slower after a long single-threaded run" of earlier reports (half of the interleaved rounds put
it right after AST).

    python benchmarks/bench_features.py [--repeats 5] [--batch-size 32] [--seconds 10] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import warnings

import numpy as np
import torch
from timing import interleaved, load_average, settle
from transformers import ASTFeatureExtractor
from transformers.utils import is_speech_available

from specpatch.feature_extraction_specpatch import SpecPatchFeatureExtractor

SR = 16000


def make_batch(batch_size: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Half noise, half tonal (two tones and a chirp over a faint noise floor) clips, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    clips = []
    for i in range(batch_size):
        if i % 2 == 0:
            clip = 0.1 * rng.standard_normal(t.shape)
        else:
            f0 = rng.uniform(100, 2000)
            clip = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 2.7 * f0 * t)
            clip += 0.2 * np.sin(2 * np.pi * (200 * t + 300 * t**2)) + 1e-3 * rng.standard_normal(t.shape)
        clips.append(clip)
    return np.stack(clips).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="minimum interleaved rounds")
    parser.add_argument("--max-rounds", type=int, default=15)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument(
        "--no-settle", dest="settle", action="store_false",
        help="start each timed call at once, not when the previous row's spinning threads have stopped",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    audio = make_batch(args.batch_size, args.seconds)
    clips = list(audio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns about AST's empty lowest Kaldi mel filter
        ast = ASTFeatureExtractor()
    ours = SpecPatchFeatureExtractor()  # kaldi front end, AST's defaults (128 mel, 1024 frames, AudioSet stats)
    logmel = SpecPatchFeatureExtractor(frontend="logmel", max_length=1024)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    backend = "torchaudio" if is_speech_available() else "numpy (transformers)"
    print(f"ASTFeatureExtractor backend: {backend}")
    load_before = load_average()

    def run(extractor):
        return lambda: extractor(clips, sampling_rate=SR, return_tensors="np")["input_values"]

    functions = {"ASTFeatureExtractor": run(ast), "SpecPatch kaldi": run(ours), "SpecPatch logmel": run(logmel)}
    ratios = {"kaldi": ("ASTFeatureExtractor", "SpecPatch kaldi"), "logmel": ("ASTFeatureExtractor", "SpecPatch logmel")}
    # each timed call starts once the process is quiet: AST's numpy path leaves OpenBLAS threads spinning ~0.1 s
    # of one core after every call (its mel matrix product), which the next row would otherwise pay for
    prepare = {name: settle for name in functions} if args.settle else None
    times, speedups = interleaved(
        functions, ratios, min_rounds=args.repeats, max_rounds=args.max_rounds, prepare=prepare
    )
    max_abs_diff = float(np.abs(functions["ASTFeatureExtractor"]() - functions["SpecPatch kaldi"]()).max())
    rounds = times["ASTFeatureExtractor"].rounds
    print(f"batch: {args.batch_size} clips x {args.seconds:g} s at {SR} Hz, {rounds} interleaved rounds, medians")
    print(f"{'extractor':<34}{'time (s)':>10}{'speed-up':>10}")
    print(f"{'ASTFeatureExtractor':<34}{times['ASTFeatureExtractor'].median:>10.3f}{1.0:>9.1f}x")
    print(f"{'SpecPatch kaldi (batched torch)':<34}{times['SpecPatch kaldi'].median:>10.3f}"
          f"{speedups['kaldi'].median:>9.1f}x{speedups['kaldi'].mark()}")  # fmt: skip
    print(f"{'SpecPatch logmel (AaPE)':<34}{times['SpecPatch logmel'].median:>10.3f}"
          f"{speedups['logmel'].median:>9.1f}x{speedups['logmel'].mark()}")  # fmt: skip
    print(f"output shape {(args.batch_size, ours.max_length, ours.num_mel_bins)}, max |AST - ours| = {max_abs_diff:.2e}")
    kaldi = speedups["kaldi"]
    print(
        f"speed-up kaldi vs ASTFeatureExtractor: {kaldi.median:.1f}x (spread {kaldi.spread:.2f}{', noisy' if kaldi.noisy else ''}; "
        f"target >= 10x)"
    )
    load_after = load_average()
    print(f"load average before / after: {load_before} / {load_after}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "backend": backend,
                    "threads": torch.get_num_threads(),
                    "clips": args.batch_size,
                    "seconds": args.seconds,
                    "times": {k: v.as_dict() for k, v in times.items()},
                    "speedups": {k: v.as_dict() for k, v in speedups.items()},
                    "max_abs_difference": max_abs_diff,
                    "load_average": {"before": load_before, "after": load_after},
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
