"""Shared timing helper for the benchmarks: warm-up, block_until_ready, median of N runs."""

import statistics
import time
from collections.abc import Callable

import jax


def median_seconds(fn: Callable, *args, runs: int = 7, warmup: int = 2) -> float:
    """Median wall-clock seconds of `fn(*args)` with its outputs ready.

    `warmup` untimed calls first absorb compilation and caching; each timed call then waits on
    every output array (jax.block_until_ready), so asynchronous dispatch cannot hide work.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        begin = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - begin)
    return statistics.median(times)
