"""The job worker (napari thread worker, progress bar, errors, Cancel) in a real napari window."""

import time

import pytest

from napari_fairseg._napari.workers import JobRunner
from napari_fairseg.errors import InputDataError
from napari_fairseg.progress import Progress


def _counting(n, *, fail=False, delay=0.0):
    for i in range(n):
        time.sleep(delay)
        yield Progress("count", i + 1, n, f"step {i + 1}")
    if fail:
        raise InputDataError("cohort.csv", "column 'group' is missing")
    return n * 10


def test_job_runner_reports_progress_results_errors_and_cancels(make_napari_viewer, qtbot, monkeypatch):
    make_napari_viewer()
    states, results, errors, shown = [], [], [], []
    monkeypatch.setattr("napari_fairseg._napari.workers.show_error", shown.append)
    runner = JobRunner(on_state=states.append)
    runner.start(_counting(3), title="count", on_done=results.append)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_counting(1), title="again", on_done=results.append)
    qtbot.waitUntil(lambda: results == [30], timeout=10_000)
    assert states == [True, False] and not runner.busy and runner.last.done == 3

    runner.start(_counting(2, fail=True), title="audit", on_done=results.append, on_error=errors.append)
    qtbot.waitUntil(lambda: len(errors) == 1, timeout=10_000)
    assert shown[0] == "audit failed: column 'group' is missing (cohort.csv)" and results == [30]  # reason first

    closed = []

    def endless():
        try:
            while True:
                time.sleep(0.01)
                yield Progress("loop", 0, None)
        finally:
            closed.append(True)

    runner.start(endless(), title="endless", on_done=results.append)
    qtbot.wait(100)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert closed == [True] and results == [30] and states[-1] is False


def test_job_runner_inline_mode(make_napari_viewer, monkeypatch):
    make_napari_viewer()
    monkeypatch.setenv("FAIRSEG_INLINE_JOBS", "1")
    results = []
    JobRunner().start(_counting(2), title="inline", on_done=results.append)
    assert results == [20]  # finished before start() returned
