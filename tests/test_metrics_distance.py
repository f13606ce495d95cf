"""HD95 against MONAI (mm) and a KD-tree transcription of the MAMA-MIA scorer (voxels)."""

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_fairseg.metrics import hausdorff95, norm_hd

from .conftest import blob


def monai_hd95(p, g, spacing):
    t = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    return float(compute_hausdorff_distance(t(p), t(g), include_background=True, percentile=95,
                                            spacing=list(spacing)).item())


def kdtree_hd95(p, g):
    """The MAMA-MIA scorer's method: surface voxels, KD-tree, max of directed 95th percentiles."""
    surf = lambda m: m & ~ndimage.binary_erosion(m, border_value=0)  # noqa: E731
    a, b = np.argwhere(surf(p)), np.argwhere(surf(g))
    fwd, bwd = cKDTree(a).query(b, k=1)[0], cKDTree(b).query(a, k=1)[0]
    return max(np.percentile(fwd, 95), np.percentile(bwd, 95))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5)])
def test_hd95_matches_monai_in_3d(spacing, rng):
    for _ in range(4):
        g = blob((30, 28, 20), rng.uniform(10, 18, 3), rng.uniform(4, 8))
        p = blob((30, 28, 20), rng.uniform(10, 18, 3), rng.uniform(4, 8)) | (rng.random((30, 28, 20)) < 0.002)
        assert hausdorff95(p, g, spacing=spacing) == pytest.approx(monai_hd95(p, g, spacing), rel=1e-5)


def test_hd95_matches_monai_in_2d_touching_the_border(rng):
    g = blob((40, 40), (2, 20), 10)  # cut by the image border
    p = blob((40, 40), (5, 22), 9)
    assert hausdorff95(p, g, spacing=(0.5, 0.8)) == pytest.approx(monai_hd95(p, g, (0.5, 0.8)), rel=1e-5)


def test_voxel_mode_matches_the_kdtree_reference(rng):
    for _ in range(4):
        g = blob((24, 24, 24), rng.uniform(8, 16, 3), rng.uniform(3, 7))
        p = blob((24, 24, 24), rng.uniform(8, 16, 3), rng.uniform(3, 7))
        assert hausdorff95(p, g) == pytest.approx(kdtree_hd95(p, g), rel=1e-9)


def test_empty_masks_and_normhd():
    e = np.zeros((10, 10), dtype=bool)
    f = e.copy()
    f[4:6, 4:6] = True
    assert hausdorff95(e, e) == 0.0
    assert hausdorff95(f, e) == np.inf and hausdorff95(e, f) == np.inf
    np.testing.assert_allclose(norm_hd(np.array([0.0, 75.0, 300.0, np.inf])), [0.0, 0.5, 2.0, 1.0])  # not clipped


def test_hd95_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        hausdorff95(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(np.ones((3, 3), bool), np.ones((3, 3), bool), spacing=(1.0, 1.0, 1.0))


def test_non_boolean_masks_count_every_nonzero_voxel_as_foreground(rng):
    # a float 0/1 prediction (a thresholded probability map) and a label map holding class value 2
    g = blob((30, 30), (14, 15), 8)
    p = blob((30, 30), (16, 13), 7)
    want = hausdorff95(p, g, spacing=(0.8, 1.2))
    assert want == pytest.approx(monai_hd95(p, g, (0.8, 1.2)), rel=1e-5)
    assert hausdorff95(p.astype(np.float32), (2 * g).astype(np.uint8), spacing=(0.8, 1.2)) == want
    assert hausdorff95((2 * p).astype(np.uint8), g.astype(np.float64), spacing=(0.8, 1.2)) == want


def test_normhd_of_a_missing_hd_is_missing():
    import pandas as pd

    got = norm_hd(pd.Series([75.0, None, np.inf], dtype=object))  # e.g. a per-case column with gaps
    assert got[0] == 0.5 and np.isnan(got[1]) and got[2] == 1.0
