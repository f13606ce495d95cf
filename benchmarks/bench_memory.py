"""Peak memory of training does not grow with the number of cases.

Trains the light 3D U-Net for one epoch (patch 64×64×48, batch 2, validation on a quarter of
the cases) on 8 and on 32 synthetic NIfTI volumes of the same size, each run in a fresh
subprocess, and reports each run's peak resident memory (``getrusage(RUSAGE_CHILDREN)``) and
their ratio. The trainer streams cases from the persistent cache (``napari_fairseg.training.data``);
holding the cohort (as the former ``CaseCache`` did) would grow with the cases. Target: ratio ≤ 1.2.
Each run uses its own empty cache folder, so the peak includes preprocessing every case once.

Run: ``.venv/bin/python benchmarks/bench_memory.py [--size 160,160,96] [--cases 8,32]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import write_cohort

RUN = """
import sys
from napari_fairseg.data.readers import open_cohort
from napari_fairseg.progress import run_job
from napari_fairseg.training import TrainConfig, model_config_for, train_job
cohort = open_cohort(sys.argv[1])
mc = model_config_for(cohort, patch_size=(64, 64, 48))
run_job(train_job(cohort, mc, TrainConfig(epochs=1, batch_size=2, device="cpu", cache=sys.argv[2])))
"""


MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(manifest: Path, cache: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time of one training run in a fresh subprocess.

    The run is the only child of a small parent that reports ``RUSAGE_CHILDREN``, so each
    measurement is its own (the counter keeps the largest child ever waited for).
    """
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-c", RUN, str(manifest), str(cache)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[-1]) / 1024, time.perf_counter() - t  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="160,160,96", help="volume size in voxels")
    p.add_argument("--cases", default="8,32", help="the two cohort sizes")
    args = p.parse_args()
    size = tuple(int(s) for s in args.size.split(","))
    counts = [int(c) for c in args.cases.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            manifest = write_cohort(Path(tmp) / f"cohort{n}", n, size)
            results[n] = peak_rss_mb(manifest, Path(tmp) / f"cache{n}")
            mb_cohort = n * np.prod(size) * 4 * 2 / 2**20
            print(f"{n:>3} cases of {'×'.join(map(str, size))}: peak RSS {results[n][0]:7.0f} MiB "
                  f"({results[n][1]:.0f} s; the decoded cohort would be {mb_cohort:.0f} MiB)", flush=True)
    small, large = counts
    ratio = results[large][0] / results[small][0]
    print(f"peak RSS ratio {large} / {small} cases: {ratio:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
