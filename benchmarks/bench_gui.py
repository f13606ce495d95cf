"""GUI responsiveness: the longest event-loop stall on the user's path, and Cancel latency.

A QTimer heartbeat ticks every 10 ms on napari's event loop; the stall is the longest gap
between ticks minus the 10 ms interval (target ≤ 100 ms).

1. **The user's path**, first in a fresh process: the docks come from Plugins › FairSeg
   (``add_plugin_dock_widget``), a real-resolution scan is opened in the Cohort dock, and
   "Run on this case" is clicked — the stall covers the click, loading the model, predicting
   with entropy, and adding the result layers. Inputs: nilearn's MNI152 T1 template at 1 mm
   (197×233×189, bundled brain model, sliding windows) and ``skimage.data.retina()`` (1411²
   RGB photo, bundled fundus model).
2. **Cancel inside one case**: MC dropout with 32 passes on MNI152 1 mm, Cancel clicked at the
   first forward-pass event; the latency is the time until the dock is idle (target ≤ 1 s).
3. **Worker vs inline**: pool inference with entropy maps (24 sample volumes) and 10 training
   epochs, each through the one worker module (``JobRunner``) in a thread, then inline on the
   GUI thread (``FAIRSEG_INLINE_JOBS=1``), so the choice of threads is made on figures.

Run under a display: ``xvfb-run -a .venv/bin/python benchmarks/bench_gui.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import QEventLoop, QTimer
from timing import brain_sample

from napari_fairseg._napari.workers import JobRunner
from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
from napari_fairseg.models.checkpoint import load_checkpoint
from napari_fairseg.models.zoo import bundled_checkpoint
from napari_fairseg.training import TrainConfig, model_config_for, train_job

TICK_MS = 10


def stalls(make_job, *, inline: bool) -> tuple[float, float, float]:
    """Run one job under a heartbeat; returns (max stall ms, 99th percentile gap ms, seconds)."""
    os.environ["FAIRSEG_INLINE_JOBS"] = "1" if inline else "0"
    loop, ticks = QEventLoop(), []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    runner = JobRunner()
    t0 = [0.0]

    def start():
        t0[0] = time.perf_counter()
        runner.start(make_job(), title="bench", on_done=lambda _: QTimer.singleShot(50, loop.quit))

    timer.start()
    QTimer.singleShot(100, start)
    loop.exec()
    timer.stop()
    seconds = time.perf_counter() - t0[0]
    gaps = np.diff(ticks) * 1000
    worst = int(np.argmax(gaps))
    if os.environ.get("BENCH_GUI_VERBOSE"):
        print(f"    worst gap at {ticks[worst] - t0[0]:+.2f} s from the job's start")
    return float(gaps.max() - TICK_MS), float(np.percentile(gaps, 99)), seconds


class Heartbeat:
    """Ticks every :data:`TICK_MS` on the event loop; ``stall()`` is the longest gap minus the tick."""

    def __init__(self):
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()

    def stall(self) -> float:
        return float(np.diff(self.ticks).max() * 1000 - TICK_MS)


def pump_until(done, timeout: float = 900) -> float:
    """Run the event loop until ``done()``; returns the seconds it took."""
    t0, loop = time.perf_counter(), QEventLoop()
    while not done():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the step did not finish in time")
        QTimer.singleShot(5, loop.quit)
        loop.exec()
    return time.perf_counter() - t0


def user_cohorts(where: Path) -> dict[str, tuple[Path, str]]:
    """Folders of real-resolution inputs as a user has them: ``{name: (folder, classes)}``."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_template
    from PIL import Image
    from skimage.data import retina

    mni = where / "mni152"
    mni.mkdir(parents=True, exist_ok=True)
    nib.save(load_mni152_template(resolution=1), mni / "mni152_1mm.nii.gz")
    eyes = where / "retina"
    eyes.mkdir(parents=True, exist_ok=True)
    Image.fromarray(retina()).save(eyes / "retina.png")
    return {"MNI152 1 mm, brain model": (mni, ""), "retina() 1411² RGB, fundus model": (eyes, "cup=2; rim=1; disc=1,2")}


def user_path(viewer, where: Path) -> None:
    """Steps 1 and 2 of the module docstring, through the docks' buttons."""
    cohort_dock = viewer.window.add_plugin_dock_widget("napari-fairseg", "Cohort")[1]
    dock = viewer.window.add_plugin_dock_widget("napari-fairseg", "Model & inference")[1]
    dock.device_combo.setCurrentText("cpu")
    cohorts = user_cohorts(where)
    for name, (folder, classes) in cohorts.items():
        cohort_dock.classes_edit.setText(classes)
        cohort_dock.path_edit.setText(str(folder))
        cohort_dock.load_button.click()
        cohort_dock.table.selectRow(0)
        cohort_dock.open_button.click()
        case = cohort_dock.table.item(0, 0).text()
        for which in ("first", "again"):  # again: the shown layers are refreshed in place
            with Heartbeat() as beat:
                pump_until(lambda: len(beat.ticks) >= 5)  # the heartbeat runs before the click
                dock.run_case_button.click()
                secs = pump_until(lambda c=case: f"{c} prediction" in viewer.layers and not dock.runner.busy)
            print(f"  {which:>5} 'Run on this case', {name:<34} longest stall {beat.stall():6.0f} ms  "
                  f"(click → layers shown {secs:5.1f} s)")
    folder, _ = cohorts["MNI152 1 mm, brain model"]
    cohort_dock.classes_edit.setText("")
    cohort_dock.path_edit.setText(str(folder))
    cohort_dock.load_button.click()
    cohort_dock.open_case(cohort_dock.table.item(0, 0).text())
    dock.uncertainty_combo.setCurrentText("mc")
    dock.passes.setValue(32)
    dock.run_case_button.click()
    pump_until(lambda: dock.runner.last is not None and dock.runner.last.stage == "forward")
    t0 = time.perf_counter()
    dock.cancel_button.click()
    pump_until(lambda: not dock.runner.busy)
    print(f"  Cancel during MC dropout (32 passes) on MNI152 1 mm: idle {time.perf_counter() - t0:5.2f} s "
          "after the click (target ≤ 1 s)")


def main():
    import tempfile

    viewer = napari.Viewer(show=True)
    print(f"heartbeat every {TICK_MS} ms on napari {napari.__version__}'s event loop; target stall ≤ 100 ms")
    print("the user's path (fresh process; docks from Plugins › FairSeg):")
    with tempfile.TemporaryDirectory() as where:
        user_path(viewer, Path(where))
    print("jobs through the worker module vs inline on the GUI thread (sample brain cohort):")
    cohort = brain_sample()
    ckpt = load_checkpoint(bundled_checkpoint("brain"))
    predictor = Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu", uncertainty="entropy"))
    train_ids = cohort.cases.loc[cohort.cases["split"] == "train", "case_id"].tolist()
    jobs = {
        "pool inference, 24 volumes + entropy maps": lambda: predict_pool_job(cohort, predictor, keep=True),
        "training, 10 epochs on 16 volumes": lambda: train_job(
            cohort, model_config_for(cohort), TrainConfig(epochs=10, device="cpu", val_fraction=0.0),
            train_ids=train_ids, val_ids=[]),
    }
    # The first job of each kind in a fresh process pays one-off start-up costs (torch's lazy
    # initialisation of kernels and autograd): measured on its own, then both kinds are warm.
    first = {
        "first pool inference in the process (2 volumes)": lambda: predict_pool_job(cohort, predictor,
                                                                                    cohort.case_ids[:2]),
        "first training in the process (1 epoch)": lambda: train_job(
            cohort, model_config_for(cohort), TrainConfig(epochs=1, device="cpu", val_fraction=0.0),
            train_ids=train_ids, val_ids=[]),
    }
    for name, make in first.items():
        worst, p99, secs = stalls(make, inline=False)
        print(f"  {name:<48} worker   longest stall {worst:7.0f} ms  p99 gap {p99:6.0f} ms  job {secs:5.1f} s")
    for name, make in jobs.items():
        for inline in (False, True):
            worst, p99, secs = stalls(make, inline=inline)
            print(f"  {name:<48} {'inline ' if inline else 'worker '}  longest stall {worst:7.0f} ms  "
                  f"p99 gap {p99:6.0f} ms  job {secs:5.1f} s")
    viewer.close()


if __name__ == "__main__":
    main()
