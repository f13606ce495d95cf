"""What every ``fairseg`` subcommand shares: the progress bar, running a job, argument parsing."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import InputDataError
from ..options import DEVICES
from ..progress import Progress, run_job

#: help of every ``--device`` option
DEVICE_HELP = f"{', '.join(DEVICES)} or cuda:N (auto: CUDA, then MPS, then CPU)"


class ProgressBar:
    """A one-line text progress bar on stderr.

    On a terminal the line is redrawn in place, whatever the stage (nested jobs switch stages
    often). Into a file or pipe it writes at most one line per stage every ``every`` seconds
    (the first event of a stage always), so long runs leave a readable log in which rare outer
    events (one per run of an experiment) are never drowned by frequent inner ones.
    """

    def __init__(self, stream=sys.stderr, width: int = 30, every: float = 10.0):
        self.stream, self.width, self.every = stream, width, every
        self.t0 = time.perf_counter()
        self.last: dict[str, float] = {}
        self.drawn = False
        self.tty = getattr(stream, "isatty", lambda: False)()

    def __call__(self, p: Progress) -> None:
        now = time.perf_counter()
        if not self.tty and now - self.last.get(p.stage, float("-inf")) < self.every:
            return
        self.last[p.stage] = now
        if p.total:
            fill = int(self.width * min(p.done, p.total) / p.total)
            bar = f"[{'#' * fill}{'.' * (self.width - fill)}] {p.done}/{p.total}"
        else:
            bar = f"{p.done}"
        line = f"{p.stage:<10} {bar} {p.message[:40]:<40} {now - self.t0:6.1f}s"
        self.stream.write(f"\r{line:<100}" if self.tty else line + "\n")
        self.drawn = True
        self.stream.flush()

    def close(self):
        if self.tty and self.drawn:
            self.stream.write("\n")


def run_with_bar(job, quiet: bool):
    bar = None if quiet else ProgressBar()
    try:
        return run_job(job, on_progress=bar)
    finally:
        if bar:
            bar.close()


def parse_ints(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def parse_names(text: str | None) -> tuple[str, ...]:
    return tuple(a.strip() for a in (text or "").split(",") if a.strip())


def parse_floats(text: str, n: int, option: str) -> tuple[float, ...]:
    """``n`` comma-separated numbers, or an :class:`InputDataError` naming ``option``."""
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise InputDataError(None, f"{option} takes {n} numbers separated by commas, got {text!r}")
    return values
