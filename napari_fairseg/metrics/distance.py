"""Surface distances: HD95 (spacing-aware or in voxels) and MAMA-MIA's NormHD.

Surfaces are the mask voxels removed by one binary erosion (face connectivity, outside the
image counts as background), as in MONAI's ``get_mask_edges``. HD95 is the larger of the two
directed 95th percentiles, as in MONAI ``compute_hausdorff_distance(percentile=95)`` and the
MAMA-MIA scorer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: MAMA-MIA normalisation constant (voxels; the challenge images are 1 mm isotropic).
HD_MAX = 150.0


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface voxels of a boolean mask."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_surface_distances(y_pred: np.ndarray, y: np.ndarray, *, spacing: Sequence[float] | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of one mask to the other mask's surface.

    Parameters
    ----------
    y_pred, y : numpy.ndarray
        Boolean masks of the same ``(*spatial)`` shape; both must be non-empty.
    spacing : sequence of float, optional
        Voxel size per axis (mm). ``None`` measures in voxels.

    Returns
    -------
    pred_to_gt, gt_to_pred : numpy.ndarray
        1-D float arrays of distances (mm, or voxels).
    """
    both = y_pred | y
    # Crop to the union's bounding box, one voxel of margin (distances are unaffected).
    lo = [max(0, int(ix.min()) - 1) for ix in np.nonzero(both)]
    hi = [min(n, int(ix.max()) + 2) for ix, n in zip(np.nonzero(both), both.shape, strict=True)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    # Erode in the full image so that the image border counts as background, then crop.
    sp, sg = surface(y_pred)[box], surface(y)[box]
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    d_to_g = ndimage.distance_transform_edt(~sg, sampling=sampling)
    d_to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return d_to_g[sp], d_to_p[sg]


def hausdorff95(y_pred: np.ndarray, y: np.ndarray, *, spacing: Sequence[float] | None = None,
                percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance between two boolean masks.

    Both empty → 0.0; exactly one empty → ``inf`` (as the MAMA-MIA scorer).
    ``spacing=None`` gives voxel units (MAMA-MIA parity), otherwise mm.
    """
    y_pred, y = np.asarray(y_pred, dtype=bool), np.asarray(y, dtype=bool)
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {y_pred.shape} and {y.shape}")
    if spacing is not None and len(spacing) != y.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {y.ndim}-D mask")
    has_p, has_g = bool(y_pred.any()), bool(y.any())
    if not has_p and not has_g:
        return 0.0
    if not has_p or not has_g:
        return float("inf")
    a, b = directed_surface_distances(y_pred, y, spacing=spacing)
    return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))


def norm_hd(hd: np.ndarray | float, *, hd_max: float = HD_MAX) -> np.ndarray:
    """MAMA-MIA NormHD = HD95 / ``hd_max``, and 1 where HD95 is infinite (not clipped)."""
    hd = np.asarray(hd, dtype=float)
    return np.where(np.isinf(hd), 1.0, hd / hd_max)
