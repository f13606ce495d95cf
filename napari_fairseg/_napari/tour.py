"""``make demo``: napari with the plugin's docks on the sample brain cohort.

With a screen it opens the viewer with every dock, the cohort loaded and a case open. Without
one (run under ``xvfb-run``) it takes a scripted tour through the real buttons — open the
cohort, run inference, show uncertainty, suggest a batch, accept one, save an edited
annotation, retrain, open the audit heatmap — and writes a screenshot of each step and the audit
report to the output folder.

Run: ``python -m napari_fairseg._napari.tour [--out demo_output] [--tour]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEventLoop, QTimer

from ..active import Project
from ..data.arrays import load_case
from ..data.synthetic import sample_cohort


def brain_cohort():
    print("the sample brain cohort (generated into the cache on first use, about 10 s)")
    return sample_cohort("brain")


def wait_idle(*runners, timeout: float = 600) -> None:
    """Run the event loop until every runner is idle (a job started by a button finished)."""
    t0 = time.perf_counter()
    loop = QEventLoop()
    while any(r.busy for r in runners):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("a demo step did not finish in time")
        QTimer.singleShot(50, loop.quit)
        loop.exec()


#: the plugin's docks as napari's Plugins › FairSeg menu lists them
DOCKS = ("Cohort", "Model & inference", "Active learning", "Fairness audit")


def docks(viewer) -> dict:
    """Open every dock through napari's plugin mechanism, as Plugins › FairSeg does.

    Returns ``{name: (dock widget, inner widget)}``. Added in reverse and tabbed, so the Cohort
    dock, where a user starts, ends up in front.
    """
    made = {}
    for i, name in enumerate(reversed(DOCKS)):
        made[name] = viewer.window.add_plugin_dock_widget("napari-fairseg", name, tabify=i > 0)
    return {name: made[name] for name in DOCKS}


def tour(out: Path) -> list[Path]:
    """The scripted tour; returns the screenshots written."""
    out.mkdir(parents=True, exist_ok=True)
    cohort = brain_cohort()
    viewer = napari.Viewer(title="napari-fairseg demo")
    viewer.window._qt_window.resize(1500, 950)
    d = docks(viewer)
    shots: list[Path] = []

    def shot(step: str, dock: str) -> None:
        d[dock][0].raise_()  # bring the tabbed dock to the front
        loop = QEventLoop()  # let the tab switch and the canvas draw before grabbing
        QTimer.singleShot(300, loop.quit)
        loop.exec()
        path = out / f"{len(shots) + 1:02d}_{step}.png"
        viewer.window._qt_window.grab().save(str(path))
        shots.append(path)
        print(f"  {path}")

    c, inf, al, au = (d[name][1] for name in DOCKS)
    c.path_edit.setText(str(cohort.source))
    c.load_button.click()
    test_case = cohort.cases.loc[cohort.cases["split"] == "test", "case_id"].iloc[0]
    c.open_case(test_case)
    shot("cohort", "Cohort")

    inf.device_combo.setCurrentText("auto")
    inf.run_case_button.click()
    wait_idle(inf.runner)
    shot("inference_and_uncertainty", "Model & inference")
    inf.out_dir.setText(str(out / "predictions"))
    inf.run_cohort_button.click()
    wait_idle(inf.runner)

    root = out / "project"
    if not (root / "project.sqlite").is_file():
        with Project.create(root, cohort) as p:
            train = cohort.cases[cohort.cases["split"] == "train"]
            for g in sorted(train["group"].unique()):
                for cid in train.loc[train["group"] == g, "case_id"].head(3):
                    p.save_annotation(cid, load_case(cohort, cid).label, author="demo", source="imported")
    al.project_edit.setText(str(root))
    al.open_button.click()
    al.start_model.setText("brain")  # the first round suggests with the bundled model
    al.batch.setValue(3)
    al.epochs.setValue(10)
    al.suggest_button.click()
    wait_idle(al.runner)
    shot("suggest", "Active learning")
    al.table.selectRow(0)
    al.accept_button.click()
    wait_idle(al.runner)
    shot("accept", "Active learning")
    layer = al.layers[-1]
    edited = np.array(layer.data)
    z = edited.shape[2] // 2
    edited[28:32, 28:32, z - 1:z + 2] = 1  # a correction, as a brush stroke would make
    layer.data = edited
    al.save_button.click()
    shot("save_annotation", "Active learning")
    al.retrain_button.click()
    wait_idle(al.runner)
    shot("retrain", "Active learning")

    au.set_cohort(cohort.source)
    au.pred_edit.setText(str(out / "predictions"))
    au.attr_a.setCurrentText("group")
    au.attr_b.setCurrentText("sex")
    au.split_combo.setCurrentText("test")
    au.run_button.click()
    wait_idle(au.runner)
    shot("audit_heatmap", "Fairness audit")
    report = au.export(out / "audit")
    print(f"  {report}")
    al.close()
    viewer.close()
    return shots


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_fairseg._napari.tour", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo_output")
    ap.add_argument("--tour", action="store_true",
                    help="take the scripted tour and write screenshots (what `make demo` does without a screen)")
    args = ap.parse_args(argv)
    if args.tour:
        print(f"scripted tour, screenshots and the audit report in {args.out}/:")
        tour(Path(args.out))
        return 0
    cohort = brain_cohort()
    viewer = napari.Viewer(title="napari-fairseg")
    cohort_dock = docks(viewer)["Cohort"][1]
    cohort_dock.load(cohort.source)
    cohort_dock.open_case(cohort.case_ids[0])
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
