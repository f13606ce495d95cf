import nibabel as nib
import numpy as np
import pytest


def blob(shape, centre, radius):
    """A boolean ball (or disc) of ``radius`` voxels."""
    grid = np.indices(shape).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius ** 2


def save_nifti(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
