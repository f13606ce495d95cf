"""GUI responsiveness while long jobs run: the longest event-loop stall, worker thread vs inline.

A QTimer heartbeat ticks every 10 ms on napari's event loop while a job runs; the stall is the
longest gap between ticks minus the 10 ms interval (target ≤ 100 ms). Jobs, on the sample brain
cohort: pool inference with entropy maps (24 volumes, bundled light U-Net) and 10 training
epochs (light U-Net). Each runs through the plugin's one worker module (``JobRunner``) in a
thread, then inline on the GUI thread (``FAIRSEG_INLINE_JOBS=1``), so the choice of threads is
made on figures.

Run under a display: ``xvfb-run -a .venv/bin/python benchmarks/bench_gui.py``.
"""

from __future__ import annotations

import os
import time

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


def main():
    viewer = napari.Viewer(show=True)
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
    print(f"heartbeat every {TICK_MS} ms on napari {napari.__version__}'s event loop; target stall ≤ 100 ms")
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
