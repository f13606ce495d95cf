"""npe2 writer: a Labels layer as NIfTI (with the source image's affine) or FairSeg-style npz.

The affine comes from the layer's ``metadata["fairseg"]["affine"]`` (set by our reader on every
layer of a case) or else from the layer's own ``affine``; the ``.npz`` output uses the
Harvard-FairSeg codes (rim −1, cup −2) under ``disc_cup_mask``. Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.atomic import atomic_path
from .errors import InputDataError


def _affine(meta: dict, ndim: int) -> np.ndarray:
    tagged = (meta.get("metadata") or {}).get("fairseg", {}).get("affine")
    if tagged is not None:
        return np.asarray(tagged, dtype=float)
    a = np.asarray(meta.get("affine", np.eye(ndim + 1)), dtype=float)
    if a.shape == (4, 4):
        return a
    out = np.eye(4)  # a 2D layer: (3, 3) → voxel-to-world for the first two axes
    out[:2, :2], out[:2, 3] = a[:2, :2], a[:2, 2]
    return out


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Save one Labels layer to ``path`` (``.nii``, ``.nii.gz`` or ``.npz``); returns the paths written."""
    label = np.asarray(data)
    p = Path(path)
    if label.ndim not in (2, 3):
        raise InputDataError(p, f"can only save 2D or 3D labels, this layer has shape {label.shape}")
    if label.min() < 0 or label.max() > np.iinfo(np.uint16).max:
        raise InputDataError(p, f"label values must lie in 0..65535, found {label.min()}..{label.max()}")
    name = p.name.lower()
    with atomic_path(p) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            dtype = np.uint8 if label.max() <= 255 else np.uint16
            img = nib.Nifti1Image(label.astype(dtype), _affine(meta, label.ndim))
            img.header.set_xyzt_units("mm")
            nib.save(img, str(tmp))
        elif name.endswith(".npz"):
            if label.ndim != 2 or not set(np.unique(label).tolist()) <= {0, 1, 2}:
                raise InputDataError(p, "FairSeg .npz holds a 2D disc/cup mask with rim 1 and cup 2 only")
            codes = np.zeros(label.shape, dtype=np.int8)
            codes[label == 1], codes[label == 2] = -1, -2
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, disc_cup_mask=codes)
        else:
            raise InputDataError(p, "save labels as .nii.gz, .nii or .npz")
    return [str(p)]
