"""The one place long jobs meet Qt: run a core job generator in a napari thread worker.

A job (:data:`napari_fairseg.progress.Job`) yields :class:`~napari_fairseg.progress.Progress`
records and returns its result. :class:`JobRunner` runs it in a ``GeneratorWorker`` thread,
shows each record in a napari progress bar (the activity dock), calls ``on_done(result)`` on
the GUI thread, shows errors in napari's notification area (the message names the file and
the problem), and cancels at the job's next yield. Set ``FAIRSEG_INLINE_JOBS=1`` to run jobs
inline on the GUI thread instead (for comparison in the responsiveness benchmark).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from napari.qt.threading import GeneratorWorker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QPushButton, QWidget

from ..errors import user_message
from ..progress import Job, Progress, run_job

#: the progress bar is redrawn at most this often (seconds); the latest event is always kept
DRAW_EVERY_S = 0.1


def _drive(job: Job):
    """Re-yield a job's progress and return its result (a plain generator for the worker)."""
    return (yield from job)


class JobRunner:
    """Runs one job at a time for a dock; ``busy`` tells the dock to disable its Run button.

    Parameters
    ----------
    on_state : callable, optional
        Called with ``True`` when a job starts and ``False`` when it ends (any way).
    """

    def __init__(self, on_state: Callable[[bool], None] | None = None):
        self.on_state = on_state
        self.worker: GeneratorWorker | None = None
        self.job: Job | None = None
        self.bar: napari_progress | None = None
        self.last: Progress | None = None
        self.title = ""
        #: how the latest job ended: ``running``, ``done``, ``failed`` or ``cancelled``
        self.outcome = ""
        self._drawn = 0.0

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, job: Job, *, title: str, on_done: Callable[[object], None],
              on_error: Callable[[Exception], None] | None = None) -> None:
        """Run ``job``; ``on_done(result)`` runs on the GUI thread when it finishes."""
        if self.busy:
            raise RuntimeError("a job is already running here; wait for it or cancel it")
        self.job, self.title, self.outcome = job, title, "running"
        self._state(True)
        if os.environ.get("FAIRSEG_INLINE_JOBS") == "1":
            try:
                result = run_job(job, on_progress=self._on_progress)
            except Exception as exc:  # noqa: BLE001 - shown to the user, like the worker's errors
                self._finish("failed")
                self._on_error(exc, on_error)
                return
            self._finish("done")
            on_done(result)
            return
        self.bar = napari_progress(total=0, desc=title)
        worker = GeneratorWorker(_drive, job)
        # events still queued from a finished or cancelled worker are dropped
        worker.yielded.connect(lambda p, w=worker: self._on_progress(p) if self.worker is w else None)
        worker.returned.connect(lambda result: (self._finish("done"), on_done(result)))
        try:  # napari may relay errors as a traceback notification; we show one clear line instead
            worker.errored.disconnect(worker._relay_error)
        except (TypeError, AttributeError):
            pass  # not connected in this napari version
        worker.errored.connect(lambda exc: (self._finish("failed"), self._on_error(exc, on_error)))
        worker.aborted.connect(self._on_aborted)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop the job at its next progress event (files it finished stay complete)."""
        if self.worker is not None:
            self.worker.quit()

    def wait(self, msecs: int = 10_000) -> None:
        """Block until the worker thread is done (closing a dock, tests)."""
        if self.worker is not None:
            self.worker.await_workers(msecs)

    # ------------------------------------------------------------------ slots (GUI thread)
    def _on_progress(self, p: Progress) -> None:
        self.last = p
        now = time.perf_counter()
        final = p.total is not None and p.done >= p.total
        if now - self._drawn < DRAW_EVERY_S and not final:
            return  # redrawing napari's bar costs GUI time (and the GIL the worker needs)
        self._drawn = now
        bar = self.bar  # updating the bar may process events that end the job
        if bar is not None:
            bar.total = p.total or 0
            bar.n = min(p.done, p.total) if p.total else p.done
            bar.set_description(f"{self.title}: {p.stage} {p.message}"[:80])
            bar.refresh()

    def _on_error(self, exc: Exception, on_error) -> None:
        show_error(f"{self.title} failed: {user_message(exc)}")
        if on_error is not None:
            on_error(exc)

    def _on_aborted(self) -> None:
        job = self.job
        self._finish("cancelled")
        if job is not None:
            try:
                job.close()  # runs the job's finally blocks (partial files are cleaned up)
            except ValueError:
                pass
        show_info(f"{self.title}: cancelled")

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        if self.bar is not None:
            self.bar.close()
        self.bar, self.worker, self.job = None, None, None
        self._state(False)

    def _state(self, running: bool) -> None:
        if self.on_state is not None:
            self.on_state(running)



class JobDock(QWidget):
    """Base of the docks that run jobs: a ``runner``, a Cancel button and the busy state.

    While a job runs, the widgets :meth:`busy_widgets` names are disabled and Cancel is
    enabled; the job stops when the dock goes. napari removes a dock (its × button,
    ``remove_dock_widget``) by detaching the widget (``setParent(None)``) without closing it,
    so the parent change is watched as well as the close event.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer the dock adds layers to (napari passes a public-only proxy of it).
    """

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.runner = JobRunner(on_state=self._on_running_changed)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job at its next step (finished files stay complete)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self._docked = False

    def busy_widgets(self) -> list[QWidget]:
        """The widgets disabled while a job runs (subclasses name their Run buttons)."""
        return []

    def _on_running_changed(self, running: bool) -> None:
        for widget in self.busy_widgets():
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        status = getattr(self, "status", None)  # a dock's status line says how a job ended
        if not running and status is not None and self.runner.outcome in ("cancelled", "failed"):
            status.setText(f"{self.runner.title}: " + ("cancelled; nothing was changed by the unfinished step."
                                                        if self.runner.outcome == "cancelled"
                                                        else "failed (the notification says why)."))

    def stop_jobs(self) -> None:
        if self.runner.busy:
            self.runner.cancel()
            self.runner.wait()

    def event(self, ev):  # noqa: D401 - Qt's name
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.stop_jobs()
        return super().event(ev)

    def closeEvent(self, event):  # noqa: N802 - Qt's name
        self.stop_jobs()
        super().closeEvent(event)
