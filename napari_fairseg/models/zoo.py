"""Checkpoints that ship with the package, one per bundled sample cohort: DEMO models.

They were trained by this project's own ``fairseg train`` (commands in ``bundled/README.md``) on
the *synthetic* sample cohorts, so ``fairseg demo`` and the viewer show real predictions at once.
They are demonstrations, not models for real scans: on anything unlike their synthetic training
data (another spacing, size, modality) they fail, and prediction says so
(:mod:`napari_fairseg.inference.domain`). ``--model brain`` or ``--model fundus`` on the command
line names them; their checkpoints carry :data:`BUNDLED_META` (``display_name``, ``description``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputDataError

ZOO = Path(__file__).resolve().parent / "bundled"
BUNDLED = {"brain": "brain-light-unet.pt", "fundus": "fundus-unet2d.pt"}
#: Metadata written into the bundled checkpoints (``make zoo``) and shown wherever they are listed.
BUNDLED_META = {
    "brain": {"display_name": "brain DEMO (synthetic, caudate)",
              "description": "DEMO model trained on synthetic data: a light 3D U-Net (4 levels) for the left "
                             "caudate, trained on 24 synthetic T1 brains (the MNI152 template warped; 12 crops of "
                             "64×64×48 voxels around the caudate and 12 whole heads, 1.5 mm; `make zoo`). Scans "
                             "are resampled to 1.5 mm RAS and normalised over their tissue first. Not for real "
                             "scans: other anatomy, contrasts or modalities give unreliable results."},
    "fundus": {"display_name": "fundus DEMO (synthetic, disc/cup)",
               "description": "DEMO model trained on synthetic data: a 2D U-Net for optic disc and cup, trained "
                              "on 30 synthetic SLO fundus images (128×128, one channel, the bundled "
                              "sample_data/fundus). Not for real photographs: other sizes or colour images "
                              "give unreliable results."},
}


def bundled_checkpoint(name: str) -> Path:
    """Path of the bundled checkpoint ``name`` (``brain`` or ``fundus``)."""
    if name not in BUNDLED:
        raise ValueError(f"bundled checkpoint must be one of {tuple(BUNDLED)}, got {name!r}")
    return ZOO / BUNDLED[name]


def bundled_models() -> dict[str, str]:
    """The bundled checkpoints for a listing: name → display name (each a DEMO model on synthetic data)."""
    return {name: BUNDLED_META[name]["display_name"] for name in BUNDLED}


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
