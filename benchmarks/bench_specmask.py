"""
Times the batched `SpecMask` against Algorithm 1 run sample by sample, on a batch of 32 x 1000 frames x 128 mel with
the paper's AudioSet settings (budget 25,600 cells, masks up to 128 x 128), in the same process.

Rows:
- `SpecMask` (batched): `specpatch.SpecMask.audioset()(batch, generator=g)`, masking and filling included.
- `spec_mask_reference` loop: the plain per-sample pure-Python transcription of Algorithm 1 (the target: the batched
  version must be at least 10x faster).
- tensor-slicing loop (information only): Algorithm 1 per sample with the mask map and the fill done by torch slicing
  (`M[t:t + w, f:f + h].any()`), the per-sample loop one would write with tensors.

Usage: `python benchmarks/bench_specmask.py [--repeats 7] [--device cpu] [--threads N]`.

Threads: by default torch runs single-threaded here (`--threads 1`), as augmentation does in DataLoader workers
(PyTorch sets one thread per worker). This also keeps the comparison meaningful on a shared machine: when other
processes oversubscribe the cores, torch's multi-threaded kernels slow down by an order of magnitude (both torch
rows, not the pure-Python one). `--threads 0` keeps torch's default.
"""

import argparse
import random
import statistics
import time

import torch

from specpatch.augmentation import SpecMask, spec_mask_reference


def spec_mask_tensor_loop(spectrogram, budget, max_height, max_width, rng, full_frequency_prob=0.7, max_tries=100):
    """Algorithm 1 on one (frames, mel) tensor with torch slicing for the overlap checks and the fill."""
    frames, mel = spectrogram.shape
    out = spectrogram.clone()
    occupied = torch.zeros(frames, mel, dtype=torch.bool, device=spectrogram.device)
    fill = spectrogram.mean()
    area = 0
    while area < budget:
        height = mel if rng.random() < full_frequency_prob else rng.randint(1, max_height)
        width = rng.randint(1, max_width)
        for _ in range(max_tries):
            t0, f0 = rng.randint(0, frames - width), rng.randint(0, mel - height)
            if not bool(occupied[t0 : t0 + width, f0 : f0 + height].any()):
                occupied[t0 : t0 + width, f0 : f0 + height] = True
                out[t0 : t0 + width, f0 : f0 + height] = fill
                area += width * height
                break
    return out


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 keeps torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = SpecMask.AUDIOSET
    module = SpecMask.audioset()
    batch = torch.randn(args.batch, 1000, 128, generator=torch.Generator().manual_seed(0)).to(args.device)
    generator = torch.Generator().manual_seed(1)
    rng = random.Random(1)

    def batched():
        return module(batch, generator=generator)

    def reference():
        return [spec_mask_reference(x, **settings, rng=rng) for x in batch]

    def tensor_loop():
        return [spec_mask_tensor_loop(x, **settings, rng=rng) for x in batch]

    batched(), tensor_loop()  # warm-up (first-call allocations)
    t_batched = median_time(batched, args.repeats)
    t_reference = median_time(reference, args.repeats)
    t_tensor = median_time(tensor_loop, args.repeats)

    print(
        f"SpecMask, AudioSet preset (budget {settings['budget']}, max {settings['max_height']} x "
        f"{settings['max_width']}), batch {args.batch} x 1000 frames x 128 mel, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'method':<40} {'time (ms)':>10} {'batched speed-up':>18}")
    print(f"{'SpecMask (batched)':<40} {1e3 * t_batched:>10.1f} {1.0:>17.1f}x")
    print(
        f"{'spec_mask_reference loop (pure Python)':<40} {1e3 * t_reference:>10.1f} {t_reference / t_batched:>17.1f}x"
    )
    print(f"{'tensor-slicing loop (information)':<40} {1e3 * t_tensor:>10.1f} {t_tensor / t_batched:>17.1f}x")
    ratio = t_reference / t_batched
    print(f"ratio reference / batched = {ratio:.1f}x (target >= 10x): {'PASS' if ratio >= 10 else 'FAIL'}")


if __name__ == "__main__":
    main()
