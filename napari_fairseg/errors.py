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


def user_message(exc: BaseException) -> str:
    """One line a person can act on, for a notification: the reason first, then the file's name.

    Long paths go last and short (a toast is cut off at its end); errors that are not ours
    become sentences instead of a bare ``'split'``.
    """
    if isinstance(exc, InputDataError):
        return f"{exc.problem} ({Path(exc.source).name})" if exc.source else exc.problem
    if isinstance(exc, KeyError):
        return f"a required column or field is missing: {exc.args[0] if exc.args else ''!s}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file or folder: {Path(exc.filename).name} (in {Path(exc.filename).parent})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {Path(exc.filename).name}"
    return str(exc) or type(exc).__name__


def json_object(text, what: str, source=None) -> dict:
    """``text`` (a JSON text of an object, e.g. from a checkpoint) decoded.

    Raises
    ------
    InputDataError
        Naming ``source`` and ``what`` when ``text`` is not a string, not JSON, or not an object.
    """
    import json

    if not isinstance(text, str):
        raise InputDataError(source, f"{what} must be a JSON text, found {type(text).__name__}")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputDataError(source, f"{what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputDataError(source, f"{what} is nested too deeply to be read") from exc
    if not isinstance(value, dict):
        raise InputDataError(source, f"{what} must be a JSON object, found {type(value).__name__}")
    return value
