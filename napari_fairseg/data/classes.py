"""Class declarations typed by a person: ``"rim=1, cup=2"`` ⇄ ``{"rim": (1,), "cup": (2,)}``.

A class is a name and the label values that make it up (fundus: ``disc=1,2`` is the union of
rim and cup). The Cohort dock reads a user's declaration with :func:`parse_classes` and shows a
cohort's or a checkpoint's classes with :func:`format_classes`.
"""

from __future__ import annotations

import re

from ..errors import InputDataError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9 _-]{0,63}$")


def parse_classes(text: str) -> dict[str, tuple[int, ...]] | None:
    """Parse ``"name=v[,v…]; name=v…"`` (``;`` or whitespace-free ``,`` between classes).

    Returns ``None`` for an empty text (the cohort kind's default classes apply).

    Raises
    ------
    InputDataError
        A part is not ``name=values``, a value is not a positive integer, or a name repeats.

    Examples
    --------
    >>> parse_classes("rim=1, cup=2")
    {'rim': (1,), 'cup': (2,)}
    >>> parse_classes("disc=1,2; cup=2")
    {'disc': (1, 2), 'cup': (2,)}
    """
    text = (text or "").strip()
    if not text:
        return None
    # "a=1, b=2" and "a=1,2; b=2": a new class starts at each "name="
    parts = re.split(r"[;,]\s*(?=[A-Za-z][A-Za-z0-9 _-]*\s*=)", text)
    out: dict[str, tuple[int, ...]] = {}
    for part in parts:
        name, eq, values = part.partition("=")
        name = name.strip()
        if not eq or not _NAME.match(name):
            raise InputDataError(None, f"classes: {part.strip()!r} is not name=value "
                                 "(write e.g. 'rim=1, cup=2' or 'disc=1,2; cup=2')")
        try:
            vals = tuple(int(v) for v in re.split(r"[,\s]+", values.strip(" ,;")) if v)
        except ValueError:
            raise InputDataError(None, f"classes: the values of {name!r} must be whole numbers, "
                                 f"got {values.strip()!r}") from None
        if not vals or min(vals) < 1:
            raise InputDataError(None, f"classes: {name!r} needs label values ≥ 1 (0 is background)")
        if name in out:
            raise InputDataError(None, f"classes: {name!r} is declared twice")
        out[name] = vals
    return out


def format_classes(classes: dict) -> str:
    """The text :func:`parse_classes` reads back: ``"rim=1; cup=2"``."""
    return "; ".join(f"{k}={','.join(str(int(v)) for v in vals)}" for k, vals in classes.items())
