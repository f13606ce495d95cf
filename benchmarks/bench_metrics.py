"""Benchmarks of the audit's hot paths, measured in one run (ratios matter more than seconds).

1. Per-case Dice + IoU of cup and rim (and disc) for 2,000 fundus cases of 200×200:
   napari-fairseg's one-pass confusion counts vs MONAI ``compute_dice`` + ``compute_iou`` on
   the same arrays (MONAI gets its one-hot tensors pre-built, untimed). Target: ≥ 3× faster,
   equal values.
2. Divergent-subgroup discovery (DivExplorer) on 10,000 cases × 6 attributes. Target: ≤ 1 s.

Run: ``.venv/bin/python benchmarks/bench_metrics.py``
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from timing import timed as best_of

from napari_fairseg.metrics import discover_subgroups, overlap_metrics

FUNDUS = {"cup": (2,), "rim": (1,), "disc": (1, 2)}



def bench_overlap(n=2000, size=200, seed=0):
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(80, 120, (2, n, 1, 1))
    r = np.hypot(yy[None] - cy, xx[None] - cx)
    rd, rc = rng.uniform(30, 45, (n, 1, 1)), rng.uniform(10, 25, (n, 1, 1))
    y = np.where(r <= rc, 2, np.where(r <= rd, 1, 0)).astype(np.uint8)
    y_pred = np.where(r + rng.normal(0, 3, (n, 1, 1)) <= rc * 1.1, 2,
                      np.where(r <= rd * 0.95, 1, 0)).astype(np.uint8)
    t_ours, ours = best_of(lambda: overlap_metrics(y_pred, y, FUNDUS))
    oh = lambda a: torch.from_numpy(np.stack([np.isin(a, v) for v in FUNDUS.values()], axis=1).astype(np.float32))  # noqa: E731
    p_t, y_t = oh(y_pred), oh(y)
    torch.set_num_threads(torch.get_num_threads())

    def monai():
        return (compute_dice(p_t, y_t, include_background=True).numpy(),
                compute_iou(p_t, y_t, include_background=True).numpy())

    t_monai, (d_ref, i_ref) = best_of(monai)
    max_diff = max(float(np.abs(ours[f"dice_{c}"] - d_ref[:, k]).max()) for k, c in enumerate(FUNDUS))
    max_diff = max(max_diff, *(float(np.abs(ours[f"iou_{c}"] - i_ref[:, k]).max()) for k, c in enumerate(FUNDUS)))
    print(f"overlap: {n} cases of {size}x{size}, classes {list(FUNDUS)}")
    print(f"  napari-fairseg (label maps in)      {t_ours * 1e3:8.1f} ms")
    print(f"  MONAI compute_dice+compute_iou      {t_monai * 1e3:8.1f} ms  (one-hot pre-built, not timed)")
    print(f"  speed-up                            {t_monai / t_ours:8.2f}x   (target >= 3x)")
    print(f"  max |difference| of values          {max_diff:.2e}")


def bench_subgroups(n=10_000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f"attr{i}": rng.integers(0, k, n).astype(str) for i, k in enumerate([2, 3, 5, 3, 4, 2])})
    df["dice"] = np.clip(0.85 - 0.1 * (df["attr0"] == "1") * (df["attr2"] == "3") + rng.normal(0, 0.05, n), 0, 1)
    t, found = best_of(lambda: discover_subgroups(df, "dice", list(df.columns[:6]), min_support=0.01))
    print(f"subgroups: {n} cases x 6 attributes, min_support 0.01 -> {len(found)} subgroups")
    print(f"  DivExplorer discovery               {t * 1e3:8.1f} ms   (target <= 1000 ms)")
    print(f"  worst: {found.iloc[0]['subgroup']} (divergence {found.iloc[0]['divergence']:+.3f}, t {found.iloc[0]['t']:.1f})")


if __name__ == "__main__":
    print(f"torch threads {torch.get_num_threads()}, numpy {np.__version__}")
    bench_overlap()
    bench_subgroups()
