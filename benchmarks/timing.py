"""Shared helpers of the benchmark scripts: timing and the sample brain cohort."""

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


def brain_sample():
    """The sample brain cohort (24 volumes of 64×64×48), generated into the cache on first use."""
    from napari_fairseg.data.synthetic import sample_cohort

    return sample_cohort("brain")
