"""Feature extraction speed: transformers' `ASTFeatureExtractor` against `SpecPatchFeatureExtractor` on CPU.

A batch of 32 ten-second clips at 16 kHz (noise, tones and chirps) goes through both extractors in this process, on
the same audio, with torch's default number of threads. Without torchaudio, `ASTFeatureExtractor` computes its
Kaldi fbank with transformers' per-frame numpy `spectrogram`; ours computes the same features as one batched torch
graph. Each extractor runs `--repeats` times, interleaved, and the fastest run of each is reported (the minimum is
the figure least disturbed by other load on the machine), with the speed-up ratio and the largest absolute
difference between the two outputs. The AaPE log-mel front end is timed too.

    python benchmarks/bench_features.py [--repeats 5] [--batch-size 32] [--seconds 10] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch
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


def time_call(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
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
    print(f"ASTFeatureExtractor backend: {'torchaudio' if is_speech_available() else 'numpy (transformers)'}")
    print(f"batch: {args.batch_size} clips x {args.seconds:g} s at {SR} Hz, {args.repeats} repeats, fastest shown")

    # Warm-up (first-call allocations, filter banks).
    ours(clips[:2], sampling_rate=SR)
    logmel(clips[:2], sampling_rate=SR)

    ast_times, ours_times, logmel_times = [], [], []
    for _ in range(args.repeats):
        seconds, ast_out = time_call(lambda: ast(clips, sampling_rate=SR, return_tensors="np")["input_values"])
        ast_times.append(seconds)
        seconds, ours_out = time_call(lambda: ours(clips, sampling_rate=SR, return_tensors="np")["input_values"])
        ours_times.append(seconds)
        seconds, _ = time_call(lambda: logmel(clips, sampling_rate=SR, return_tensors="np")["input_values"])
        logmel_times.append(seconds)

    ast_best, ours_best, logmel_best = min(ast_times), min(ours_times), min(logmel_times)
    max_abs_diff = float(np.abs(ast_out - ours_out).max())
    print(f"{'extractor':<34}{'time (s)':>10}{'speed-up':>10}")
    print(f"{'ASTFeatureExtractor':<34}{ast_best:>10.3f}{1.0:>9.1f}x")
    print(f"{'SpecPatch kaldi (batched torch)':<34}{ours_best:>10.3f}{ast_best / ours_best:>9.1f}x")
    print(f"{'SpecPatch logmel (AaPE)':<34}{logmel_best:>10.3f}{ast_best / logmel_best:>9.1f}x")
    print(f"output shape {tuple(ours_out.shape)}, max |AST - ours| = {max_abs_diff:.2e}")
    print(f"speed-up kaldi vs ASTFeatureExtractor: {ast_best / ours_best:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
