"""npe2 reader: NIfTI volumes, Harvard-FairSeg ``.npz`` files, 2D images (PNG, JPEG, TIFF, BMP),
cohort manifests and dataset folders.

Thin: the work is in :mod:`napari_fairseg.data`. A manifest or dataset folder opens the cohort's
first case (image and ground truth, each layer tagged with the cohort path and case id in its
``metadata["fairseg"]``); the Cohort dock lists the rest. Bad files raise errors that name them.
"""

from __future__ import annotations

from pathlib import Path

from .data.arrays import IMAGE2D_SUFFIXES, NIFTI_SUFFIXES
from .data.layers import LayerData, case_layers, file_layers

FILE_SUFFIXES = (*NIFTI_SUFFIXES, ".npz", *IMAGE2D_SUFFIXES)


def _is_cohort(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".csv"


def get_reader(path: str | list[str]):
    """The reader function for ``path`` (or a list of such paths), or ``None`` if not ours."""
    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    if not paths or not all(_is_cohort(p) or p.name.lower().endswith(FILE_SUFFIXES) for p in paths):
        return None
    return read


def read(path: str | list[str]) -> list[LayerData]:
    """Layer data of every path: files as layers, cohorts as their first case."""
    from .data.readers import open_cohort

    layers: list[LayerData] = []
    for p in (path if isinstance(path, list) else [path]):
        p = Path(p)
        if _is_cohort(p):
            cohort = open_cohort(p)
            layers += case_layers(cohort, cohort.case_ids[0])
        else:
            layers += file_layers(p)
    return layers
