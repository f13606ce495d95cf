"""Does the bundled brain model find the left caudate on the whole template it was made from?

nilearn's MNI152 T1 at resolution 1 (197×233×189 voxels of 1 mm, the full field of view, scalp
and background included) is written as a NIfTI file into a temporary folder of its own and
predicted by the installed ``fairseg predict`` script, exactly as a user would run it. The
prediction, back on the scan's own 1 mm grid, is compared with the left-caudate label the
brain sample derives from the same template (:func:`napari_fairseg.data.synthetic.brain_template`):

- predicted volume (cm³) against the label's,
- Dice against the label,
- the share of predicted voxels within 5 mm of the label ("near the caudate"),
- the number of connected pieces of the prediction and the largest piece's share.

Before the preprocessing pipeline the bundled model predicted 0.49 cm³ in scattered pieces,
12 % near the caudate (issue 12). Run: ``.venv/bin/python benchmarks/check_mni152.py
[--model brain] [--resolution 1]``; prints one table row. ``--resolution 2`` is nilearn's 2 mm
version of the template.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def caudate_check(prediction: np.ndarray, caudate: np.ndarray, spacing_mm: float, near_mm: float = 5.0) -> dict:
    """Volume, Dice, share near the caudate and pieces of a predicted mask on the label's grid.

    Parameters
    ----------
    prediction, caudate : ndarray of bool, (X, Y, Z)
        The predicted mask and the reference label on the same isotropic grid.
    spacing_mm : float
        Voxel size (mm), for volumes and the ``near_mm`` distance.
    """
    prediction, caudate = prediction.astype(bool), caudate.astype(bool)
    voxel_cm3 = spacing_mm ** 3 / 1000.0
    distance = ndimage.distance_transform_edt(~caudate) * spacing_mm
    pieces, n = ndimage.label(prediction)
    sizes = np.bincount(pieces.ravel())[1:] if n else np.zeros(0)
    total = int(prediction.sum())
    return {"volume_cm3": total * voxel_cm3, "label_cm3": int(caudate.sum()) * voxel_cm3,
            "dice": 2 * int((prediction & caudate).sum()) / max(total + int(caudate.sum()), 1),
            "near": float((distance[prediction] <= near_mm).mean()) if total else float("nan"),
            "pieces": int(n), "largest": float(sizes.max() / total) if total else float("nan")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="brain", help="bundled name or checkpoint file")
    parser.add_argument("--resolution", type=int, default=1, choices=(1, 2))
    args = parser.parse_args(argv)
    from nilearn.datasets import load_mni152_template

    from napari_fairseg.data.synthetic import brain_template

    template = load_mni152_template(resolution=args.resolution)
    _, caudate_1mm, t_aff = brain_template()
    fairseg = Path(sys.executable).with_name("fairseg")
    work = Path(tempfile.mkdtemp(prefix="mni152-"))
    try:
        scans, out = work / "scans", work / "out"
        scans.mkdir()
        nib.save(template, str(scans / "mni152.nii.gz"))
        t0 = time.perf_counter()
        subprocess.run([str(fairseg), "--quiet", "predict", str(scans), "--model", args.model, "--out", str(out),
                        "--device", "cpu", "--uncertainty", "none"], check=True)
        seconds = time.perf_counter() - t0
        pred_img = nib.load(str(next(out.glob("mni152*.nii.gz"))))
        assert np.allclose(pred_img.affine, template.affine), "prediction is not on the scan's grid"
        prediction = np.asarray(pred_img.dataobj) > 0
        if args.resolution != 1:  # the label lives on the 1 mm grid: bring it to the scan's
            to_label = np.linalg.inv(t_aff) @ template.affine
            grid = np.indices(prediction.shape, dtype=np.float64).reshape(3, -1)
            vox = to_label[:3, :3] @ grid + to_label[:3, 3:4]
            caudate = ndimage.map_coordinates(caudate_1mm.astype(np.float32), vox, order=1).reshape(prediction.shape) > 0.5
        else:
            caudate = caudate_1mm
        spacing = float(abs(template.affine[0, 0]))
        row = caudate_check(prediction, caudate, spacing)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shape = "×".join(str(s) for s in template.shape)
    print(f"MNI152 {shape} at {spacing:g} mm, model {args.model}: predicted {row['volume_cm3']:.2f} cm³ "
          f"(label {row['label_cm3']:.2f}), Dice {row['dice']:.3f}, {100 * row['near']:.0f} % within 5 mm of the "
          f"caudate, {row['pieces']} piece(s), largest {100 * row['largest']:.0f} %; fairseg predict {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
