"""Shared set-up of the dock tests: every dock is opened the way napari's Plugins menu opens it."""

from pathlib import Path

import pytest

from napari_fairseg._napari.tour import DOCKS

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


@pytest.fixture
def open_dock():
    """``open_dock(viewer, name)`` → the dock's widget, added by ``add_plugin_dock_widget`` (as
    Plugins › FairSeg › <name> does: napari builds it and injects the viewer)."""

    def _open(viewer, name: str):
        assert name in DOCKS
        _, widget = viewer.window.add_plugin_dock_widget("napari-fairseg", name)
        return widget

    return _open


@pytest.fixture
def shot():
    """``shot(viewer, name)`` saves the whole window (1400×900) for a person to look at:
    ``build/screenshots/<name>.png``."""

    def _shot(viewer, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        window = viewer.window._qt_window
        window.resize(1400, 900)
        viewer.reset_view()
        assert window.grab().save(str(path))
        return path

    return _shot


@pytest.fixture
def labelled_project(tmp_path):
    """``labelled_project(cohort)`` → ``(root, train ids)``: a project on ``cohort`` whose first two
    training cases are labelled with their ground truth."""
    return lambda cohort: _project_with_two_labels(tmp_path, cohort)


def _project_with_two_labels(tmp_path, cohort):
    from napari_fairseg.active import Project
    from napari_fairseg.data.arrays import load_case

    root = tmp_path / "proj"
    train = cohort.cases.loc[cohort.cases["split"] == "train", "case_id"].tolist()
    with Project.create(root, cohort) as p:
        for cid in train[:2]:
            p.save_annotation(cid, load_case(cohort, cid).label, author="seed", source="imported")
    return root, train


@pytest.fixture
def png_cohort(tmp_path):
    """A folder of the user's own PNG photos (see :func:`_write_png_cohort`)."""
    return _write_png_cohort(tmp_path / "my_eyes")


def _write_png_cohort(out, *, n=8, size=(40, 48), seed=0):
    """A folder of the user's own RGB PNG photos with 0/1/2 masks (rim 1, cup 2) and a
    ``metadata.csv`` holding a ``split`` and a ``sex`` column — no manifest."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        cy, cx = rng.uniform(14, size[0] - 14), rng.uniform(14, size[1] - 14)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask = np.where(d2 <= 36, 2, np.where(d2 <= 100, 1, 0)).astype(np.uint8)
        img = np.stack([60 + 120 * (mask > 0) + 60 * (mask == 2)] * 3, -1) + rng.normal(0, 10, (*size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / f"eye{i:02d}.png")
        Image.fromarray(mask).save(out / f"eye{i:02d}_mask.png")
        rows.append({"case_id": f"eye{i:02d}", "split": "test" if i >= n - 3 else "train",
                     "sex": "F" if i % 2 else "M"})
    pd.DataFrame(rows).to_csv(out / "metadata.csv", index=False)
    return out
