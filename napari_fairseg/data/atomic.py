"""Safe file writes: atomic, inside their output folder, and CSV cells that no spreadsheet runs.

An atomic write goes to a temporary file in the same folder, is fsynced, then renamed over the
target: a process killed in the middle of a write leaves the previous file intact. Names built
from cohort data (case ids, attribute names) are joined with :func:`path_inside`, which refuses
one that would resolve outside its folder. CSV files are written through
:func:`write_csv_atomic`, which neutralises cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ..errors import InputDataError

_UMASK = os.umask(0)
os.umask(_UMASK)
#: Mode of a new file: what ``open()`` would give (mkstemp alone makes it private, 0600).
FILE_MODE = 0o666 & ~_UMASK


# --------------------------------------------------------------------------- output paths
#: a folder napari-fairseg writes results into (predictions, a labelling project, an audit
#: report) holds this file; the dataset readers never read such a folder as input, so results
#: written inside a user's dataset folder do not turn into cases when it is opened again
OUTPUT_MARKER = ".fairseg-output"


def mark_output(folder: str | Path) -> Path:
    """Create ``folder`` (if needed) and mark it as an output folder (:data:`OUTPUT_MARKER`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    if marker.is_symlink() or marker.exists():  # never written through a link
        return folder
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    except FileExistsError:  # another writer marked it first
        return folder
    with os.fdopen(fd, "w") as fh:
        fh.write("written by napari-fairseg: results, not input data\n")
    return folder


def is_output(folder: str | Path) -> bool:
    """Whether ``folder`` was marked by :func:`mark_output`."""
    return (Path(folder) / OUTPUT_MARKER).is_file()


def check_inside(path: str | Path, root: str | Path) -> Path:
    """Return ``path`` if it resolves inside the folder ``root`` (symbolic links and ``..`` followed).

    Raises
    ------
    InputDataError
        ``path`` resolves outside ``root`` (or is ``root`` itself).
    """
    path, root = Path(path), Path(root)
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise InputDataError(root, f"refusing to write {str(path)!r}: it resolves outside the output folder "
                             f"({resolved})")
    return path


def path_inside(root: str | Path, name: str) -> Path:
    """``root / name``, refusing a ``name`` (a case id, an attribute) that would leave ``root``."""
    return check_inside(Path(root) / name, root)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def file_stem(name: str, *, fallback: str = "unnamed") -> str:
    """A file-name-safe form of a free text (an attribute name): letters, digits, ``-`` and ``_``.

    ``"x/../pwn"`` gives ``"x_pwn"``; a name with no safe character gives ``fallback``.
    """
    return _UNSAFE.sub("_", str(name)).strip("_") or fallback


@contextlib.contextmanager
def atomic_path(path: str | Path, *, root: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``, ``.npz``), so writers that
    choose a format by extension work on it. On error the temporary file is removed.
    With ``root``, ``path`` must resolve inside that folder (checked before any folder is made).
    """
    path = Path(path)
    if root is not None:
        check_inside(path, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".part{suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else FILE_MODE)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str, *, root: str | Path | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path, root=root) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes, *, root: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path, root=root) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# --------------------------------------------------------------------------- CSV
#: First characters that make a spreadsheet (Excel, LibreOffice, Sheets) read a cell as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")


def _is_formula(text: str) -> bool:
    body = text.lstrip("'")  # already-quoted cells get one more quote, so reading back is exact
    return len(body) > 1 and body.startswith(FORMULA_START) and not _NUMBER.match(body)


def neutralise_cell(value):
    """``'`` + ``value`` for a text a spreadsheet would run as a formula; anything else unchanged.

    Numbers (also numbers written as text, ``"-1.5"``) and a lone ``"-"`` stay as they are.
    """
    if isinstance(value, str) and _is_formula(value):
        return "'" + value
    return value


def restore_cell(value):
    """The inverse of :func:`neutralise_cell` (for CSV files this package wrote)."""
    if isinstance(value, str) and value.startswith("'") and _is_formula(value):
        return value[1:]
    return value


def _map_cells(table: pd.DataFrame, fn) -> pd.DataFrame:
    out = table.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):  # text, categories, mixed: cell by cell
            out[col] = out[col].astype(object).map(fn)
    out.columns = pd.Index([fn(c) for c in out.columns])
    if not (pd.api.types.is_numeric_dtype(out.index) or isinstance(out.index, pd.MultiIndex)):
        out.index = pd.Index([fn(v) for v in out.index], name=fn(out.index.name))
    return out


def neutralise_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells, column names and index labels cannot run as formulas.

    A cell starting with ``=``, ``+``, ``-``, ``@`` (or a tab / carriage return) gets a leading
    ``'``, which spreadsheets show as a text marker; numeric columns are left alone, so a
    negative number stays a number. :func:`restore_formulas` undoes it.
    """
    return _map_cells(table, neutralise_cell)


def restore_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`neutralise_formulas` on a table read back from a CSV file."""
    return _map_cells(table, restore_cell)


def write_csv_atomic(path: str | Path, table: pd.DataFrame, *, index: bool = False,
                     root: str | Path | None = None) -> Path:
    """Write ``table`` as CSV atomically, formula cells neutralised; return the path.

    Every CSV file napari-fairseg writes goes through here.
    """
    return write_text_atomic(path, neutralise_formulas(table).to_csv(index=index), root=root)
