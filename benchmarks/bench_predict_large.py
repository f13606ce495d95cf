"""Peak memory and wall time of ``fairseg predict`` on one real-size breast DCE-MRI case at 1 mm.

The breast sample (``fairseg sample breast``: 3 phases of 448×448×120 voxels at 0.7×0.7×1.5 mm,
MAMA-MIA layout) is generated with ``--cases`` cases; a light 3D U-Net is trained for one epoch
on its train split with seed 004's grid (``--spacing 1,1,1``, the breast-box crop), which is
enough to measure prediction, not to segment. Then ``fairseg predict`` runs on one test case in
a fresh subprocess (the only child of a parent that reports ``RUSAGE_CHILDREN``), with the
default uncertainty (entropy, maps written), and again with MC dropout (8 passes). Printed:
peak RSS, wall time, and the size of the decoded case for scale (3 × float32).

Run: ``.venv/bin/python benchmarks/bench_predict_large.py [--cases 3] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def fairseg(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("fairseg")), "--quiet", *args]


def measured(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of ``cmd`` in a fresh subprocess."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True, stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[-1]) / 1024, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3, help="breast cases to generate (one is predicted)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    from napari_fairseg.data.readers import open_cohort

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(fairseg("sample", "breast", "--out", str(tmp / "breast"), "--cases", str(args.cases)), check=True)
        cohort = open_cohort(tmp / "breast")
        test = cohort.case_ids[-1]  # any case: the model is there to be timed, not to segment
        model = tmp / "m.pt"
        subprocess.run(fairseg("train", str(tmp / "breast"), "--out", str(model), "--spacing", "1,1,1",
                               "--patch", "64,64,32", "--epochs", "1", "--val-fraction", "0", "--dropout", "0.1",
                               "--device", args.device), check=True, env={**os.environ, "FAIRSEG_CACHE": str(tmp)})
        shape = cohort_shape(cohort, test)
        decoded = 3 * 4 * shape[0] * shape[1] * shape[2] / 2**20
        print(f"case {test}: 3 × {'×'.join(map(str, shape))} voxels (decoded {decoded:.0f} MiB), predicted at 1 mm "
              f"on {args.device}")
        for label, extra in (("entropy, maps", []), ("MC dropout ×8, maps", ["--uncertainty", "mc", "--passes", "8"])):
            rss, seconds = measured(fairseg("predict", str(tmp / "breast"), "--model", str(model), "--cases", test,
                                            "--out", str(tmp / f"pred-{len(extra)}"), "--device", args.device, *extra))
            print(f"  {label:<22} peak RSS {rss:6.0f} MiB ({rss / decoded:.1f}× the decoded case), {seconds:.1f} s "
                  f"(process start and imports included)", flush=True)


def cohort_shape(cohort, case_id: str) -> tuple[int, ...]:
    import nibabel as nib

    from napari_fairseg.data.manifest import split_channels

    return nib.load(split_channels(cohort.row(case_id)["image"])[0]).shape


if __name__ == "__main__":
    main()
