"""Long jobs are generators of :class:`Progress` records that ``return`` their result.

The same generator runs inline (tests, the CLI) through :func:`run_job`, and in a napari
worker in the GUI. A job yields at least once per unit of work so that cancelling is prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

from .errors import Cancelled

T = TypeVar("T")
Job = Generator["Progress", None, T]


@dataclass(frozen=True)
class Progress:
    """One progress event of a long job.

    Attributes
    ----------
    stage : str
        Short name of the current step (``"metrics"``, ``"subgroups"``, ...).
    done : int
        Units of work finished in this stage.
    total : int or None
        Units of work in this stage, ``None`` when unknown.
    message : str
        Free text for a status line.
    """

    stage: str
    done: int = 0
    total: int | None = None
    message: str = ""

    def __post_init__(self):
        if self.done < 0 or (self.total is not None and self.total < 0):
            raise ValueError(f"progress counts must be >= 0, got done={self.done}, total={self.total}")


def run_job(
    job: Job[T],
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> T:
    """Drive a job generator to its end and return its result.

    Parameters
    ----------
    job : generator
        Yields :class:`Progress`, returns the result.
    on_progress : callable, optional
        Called with every progress record.
    should_cancel : callable, optional
        Polled after every record; when it returns True the job is closed (its ``finally``
        blocks run) and :class:`~napari_fairseg.errors.Cancelled` is raised.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)
        if should_cancel is not None and should_cancel():
            job.close()
            raise Cancelled(f"cancelled during {event.stage!r}")
