"""Checkpoints that ship with the package, one per bundled sample cohort.

They were trained by this project's own ``fairseg train`` (commands in ``bundled/README.md``), so
``fairseg demo`` and the viewer show real predictions at once. ``--model brain`` or
``--model fundus`` on the command line names them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputDataError

ZOO = Path(__file__).resolve().parent / "bundled"
BUNDLED = {"brain": "brain-light-unet.pt", "fundus": "fundus-unet2d.pt"}


def bundled_checkpoint(name: str) -> Path:
    """Path of the bundled checkpoint ``name`` (``brain`` or ``fundus``)."""
    if name not in BUNDLED:
        raise ValueError(f"bundled checkpoint must be one of {tuple(BUNDLED)}, got {name!r}")
    return ZOO / BUNDLED[name]


def resolve_checkpoint(ref: str | Path) -> Path:
    """A checkpoint path, or the name of a bundled checkpoint."""
    path = Path(ref)
    if path.is_file():
        return path
    if str(ref) in BUNDLED:
        found = bundled_checkpoint(str(ref))
        if found.is_file():
            return found
        raise InputDataError(found, "the bundled checkpoint is missing from this installation")
    raise InputDataError(path, f"checkpoint file not found (bundled ones: {', '.join(BUNDLED)})")
