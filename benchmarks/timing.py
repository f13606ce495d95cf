"""Shared timing helper of the benchmark scripts."""

from __future__ import annotations

import time

import numpy as np


def timed(fn, repeats: int = 3, reduce=min):
    """Run ``fn`` ``repeats`` times; return ``(reduce(seconds), last result)``."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(reduce(times)), out


def median(times) -> float:
    return float(np.median(times))
