"""Shared helpers of the benchmark scripts: timing, the sample brain cohort, a cohort of any size."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


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


def write_cohort(folder: Path, n: int, size: tuple[int, ...], seed: int = 0) -> Path:
    """``n`` volumes of ``size`` (a noisy bright ball on a dark field), two groups; returns the manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.indices(size, dtype=np.float32)
    rows = []
    for i in range(n):
        centre = [rng.uniform(0.35, 0.65) * s for s in size]
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= (0.15 * min(size)) ** 2
        image = (ball * 1.0 + rng.normal(0, 0.3, size)).astype(np.float32)
        affine = np.diag([1.0, 1.0, 1.5, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(folder / f"case{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), affine), str(folder / f"case{i:03d}_seg.nii.gz"))
        rows.append({"case_id": f"case{i:03d}", "image": str(folder / f"case{i:03d}.nii.gz"),
                     "label": str(folder / f"case{i:03d}_seg.nii.gz"), "split": "train", "group": "ab"[i % 2]})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest
