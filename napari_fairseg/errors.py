"""Errors that users see: each names the file (or case) and the problem."""

from __future__ import annotations

from pathlib import Path


class FairSegError(Exception):
    """Base class of every error napari-fairseg raises on purpose."""


class InputDataError(FairSegError, ValueError):
    """Bad input data: a missing or corrupt file, a wrong shape, an unknown code, ...

    Parameters
    ----------
    source : str or Path or None
        The file (or case id) the problem is in; ``None`` when it concerns no single file.
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, source: str | Path | None, problem: str):
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class Cancelled(FairSegError):
    """A long job was cancelled by its caller between two progress events."""
