# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Side-by-side timing that stays meaningful on a shared, loaded machine (imported by the benchmark scripts).

`interleaved` runs the functions round-robin (the order alternating between rounds, so no row always follows the
same neighbour), and keeps adding rounds until every row's spread, and every requested ratio's spread, is small
(or a round / time limit is reached). A ratio is the median of its per-round ratios: both runs of a round see about
the same load, so a load change between rounds cancels out, which the ratio of two medians would not do. A row or
ratio whose spread stays above the limit is marked `noisy`: the report prints it as such, never as a finding.

The spread is the interquartile range over the median, `(q3 - q1) / median`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def spread(values: list[float]) -> float:
    """Interquartile range over the median (infinite for fewer than 2 values)."""
    if len(values) < 2:
        return float("inf")
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    median = statistics.median(values)
    return (q3 - q1) / abs(median) if median else float("inf")


def settle(poll_s: float = 0.01, idle_fraction: float = 0.1, max_s: float = 1.0) -> float:
    """Waits (sleeping) until no thread of this process burns CPU any more, and returns the seconds waited.

    Thread pools keep their threads spinning for a while after a parallel call before they sleep: OpenBLAS's (numpy's
    matrix products) for ~0.1 s of one core, libgomp's (torch's intra-op threads) for ~10 ms. A timed call that
    starts meanwhile shares the cores with them, and pays for what the row timed before it did. The process counts as
    quiet once it burns less than `idle_fraction` of one core over a `poll_s` sleep (at most `max_s` in all)."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_s:
        cpu = time.process_time()
        time.sleep(poll_s)
        if time.process_time() - cpu < idle_fraction * poll_s:
            break
    return time.perf_counter() - start


@dataclass
class Stat:
    """A timing (seconds) or a ratio: median over the rounds, spread, rounds, and whether it stayed noisy."""

    median: float
    spread: float
    rounds: int
    noisy: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def mark(self) -> str:
        """`""` or `" (noisy)"`, for printing next to the figure."""
        return " (noisy)" if self.noisy else ""


def interleaved(
    functions: dict[str, Callable[[], object]],
    ratios: dict[str, tuple[str, str]] | None = None,
    min_rounds: int = 5,
    max_rounds: int = 30,
    max_spread: float = 0.1,
    budget_s: float = 120.0,
    synchronize: Callable[[], None] | None = None,
    prepare: dict[str, Callable[[], object]] | None = None,
) -> tuple[dict[str, Stat], dict[str, Stat]]:
    """Times `functions` round-robin (one warm-up call each first) and returns `(times, ratios)`.

    `ratios` maps a name to `(numerator, denominator)` row names: `times[numerator] / times[denominator]`, the
    median of the per-round ratios. Rounds continue while any row or ratio has a spread above `max_spread`, up to
    `max_rounds` rounds or `budget_s` seconds (at least `min_rounds`). `synchronize` (e.g. `torch.cuda.synchronize`)
    runs before and after every timed call. `prepare[name]`, where given, runs (untimed) before each timed call of
    that row, e.g. to evict the caches.
    """
    ratios = ratios or {}
    prepare = prepare or {}
    sync = synchronize or (lambda: None)
    for function in functions.values():
        function()
    sync()
    times = {name: [] for name in functions}
    names = list(functions)
    start = time.perf_counter()
    rounds = 0
    while True:
        for name in names if rounds % 2 == 0 else names[::-1]:
            if name in prepare:
                prepare[name]()
            sync()
            t0 = time.perf_counter()
            functions[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
        per_round = {key: [n / d for n, d in zip(times[a], times[b])] for key, (a, b) in ratios.items()}
        spreads = [spread(v) for v in times.values()] + [spread(v) for v in per_round.values()]
        if rounds >= min_rounds and (
            max(spreads) <= max_spread or rounds >= max_rounds or time.perf_counter() - start > budget_s
        ):
            break

    def stat(values):
        value_spread = spread(values)
        return Stat(statistics.median(values), value_spread, len(values), value_spread > max_spread)

    return {name: stat(v) for name, v in times.items()}, {key: stat(v) for key, v in per_round.items()}
