"""Timing helper shared by the benchmark scripts (no JAX or torch import, so any interpreter can use it)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` (which blocks until its result is ready) after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def alternating_medians(calls: dict[str, Callable[[], object]], repeats: int, pause: float = 0.0,
                        self_timed: tuple[str, ...] = ()) -> dict[str, float]:
    """Median wall time of each of `calls`, the calls taking turns after one warm-up round, so that ratios of
    the medians are measured under the same load. The calls named in `self_timed` return their own seconds
    (work timed in another process). `pause`: seconds of sleep before each call (lets the other process's
    worker threads go idle)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats + 1):
        for name, call in calls.items():
            time.sleep(pause)
            start = time.perf_counter()
            reported = call()
            seconds = reported if name in self_timed else time.perf_counter() - start
            if round_index:
                times[name].append(seconds)
    return {name: float(np.median(values)) for name, values in times.items()}
