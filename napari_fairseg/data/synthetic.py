"""Synthetic cohorts with a known, controllable group effect (METHODS.md §7).

**Brain** (seed 001 / SimBA style). Real T1 anatomy: the ICBM 2009a MNI152 template and its
grey-/white-matter maps that ship inside the ``nilearn`` package. The left-caudate label is
derived from the template's own tissue maps (grey matter > 0.5 inside an anatomical box
beside the left lateral ventricle, largest connected part), so it follows image content.
Every case is the template resampled through a random smooth *global* deformation (a random
affine of a few degrees / percent plus a smooth displacement field); **Group 1** cases also get
a *local* radial deformation centred on the caudate whose peak displacement (mm) is drawn from
N(μ, σ): strong bias μ=4, σ=2; weak bias μ=2, σ=2 (the paper's settings; its units are a
scaling of the first principal deformation mode, ours are millimetres). Image and label are
warped by the same field. Attributes: ``group`` (the biased one), plus ``sex`` and ``age``
drawn independently of the deformation (a negative control: an audit must find no gap there).

**Fundus** (Harvard-FairSeg style). SLO-like 2D images with an optic disc and cup, written as
FairSeg ``.npz`` (keys ``slo_fundus``, ``disc_cup_mask`` with codes 0 / −1 rim / −2 cup, and
the six attribute codes). The documented group effect: Black patients have a larger
cup-to-disc ratio (mean 0.62 vs 0.45) and a lower disc contrast, so models trained on the
majority segment their cups worse.

Both are deterministic for a given seed.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ..progress import Job, Progress, run_job
from .atomic import atomic_path
from .manifest import Cohort, write_manifest

BIAS = {"strong": (4.0, 2.0), "weak": (2.0, 2.0)}
#: Box (MNI mm) around the left caudate head and body, medial to the internal capsule.
CAUDATE_BOX = ((-22.0, -4.0), (-8.0, 28.0), (-4.0, 26.0))


def _template_file(name: str) -> Path:
    return Path(str(importlib.resources.files("nilearn.datasets") / "data" / name))


@functools.lru_cache(maxsize=1)
def brain_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm MNI152 (2009a) T1 in [0, 1], the derived left-caudate mask and their affine."""
    t1_img = nib.load(_template_file("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gm_img = nib.load(_template_file("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    gm /= max(float(gm.max()), 1e-6)
    affine = np.asarray(t1_img.affine, dtype=float)
    ijk = np.indices(gm.shape, dtype=np.float32)
    xyz = [affine[a, 0] * ijk[0] + affine[a, 1] * ijk[1] + affine[a, 2] * ijk[2] + affine[a, 3] for a in range(3)]
    box = np.ones(gm.shape, dtype=bool)
    for c, (lo, hi) in zip(xyz, CAUDATE_BOX, strict=True):
        box &= (c > lo) & (c < hi)
    parts, n = ndimage.label((gm > 0.5) & box)
    sizes = ndimage.sum_labels(np.ones_like(parts), parts, index=np.arange(1, n + 1))
    caudate = parts == (int(np.argmax(sizes)) + 1)
    return t1 / float(t1.max()), caudate, affine


def _smooth_field(rng, shape, n_ctrl, amplitude):
    """A smooth random 3-component displacement field (mm) on ``shape``."""
    coarse = rng.normal(0.0, amplitude, size=(3, *n_ctrl))
    zoom = [s / c for s, c in zip(shape, n_ctrl, strict=True)]
    return np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest")[tuple(slice(0, s) for s in shape)] for c in coarse])


def _rotation(rng, max_deg):
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def warp_brain_case(rng: np.random.Generator, *, shape, spacing, local_mm: float | None,
                    local_radius: float = 7.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One brain case: returns ``(t1 (X, Y, Z) float32, label (X, Y, Z) uint8, affine)``.

    The output grid (``spacing`` mm, RAS) is centred on the template caudate's centroid. A
    sample at world point x is read from the template at A(x − c) + c + u_global(x) +
    u_local(x), where u_local = s·(x − c)/r·exp(½ − |x − c|²/(2r²)) peaks at s mm at |x − c| = r.
    """
    t1, caudate, t_aff = brain_template()
    t_inv = np.linalg.inv(t_aff)
    centre = (t_aff @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1.0])[:3]
    shape = tuple(int(s) for s in shape)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ grid + affine[:3, 3:4]
    rot = _rotation(rng, 4.0) * rng.uniform(0.96, 1.04)
    src = rot @ (world - centre[:, None]) + centre[:, None]
    src += _smooth_field(rng, shape, (5, 5, 4), 2.0).reshape(3, -1)
    if local_mm is not None:
        rel = world - centre[:, None]
        r2 = (rel ** 2).sum(axis=0)
        src += local_mm * rel / local_radius * np.exp(0.5 - r2 / (2 * local_radius ** 2))
    vox = t_inv[:3, :3] @ src + t_inv[:3, 3:4]
    img = ndimage.map_coordinates(t1, vox, order=1, mode="constant", cval=0.0).reshape(shape)
    lab = ndimage.map_coordinates(caudate.astype(np.float32), vox, order=1, mode="constant").reshape(shape)
    bias_field = 1.0 + _smooth_field(rng, shape, (3, 3, 3), 0.04)[0]
    img = img * bias_field + rng.normal(0.0, 0.015, size=shape)
    return np.clip(img, 0, None).astype(np.float32), (lab > 0.5).astype(np.uint8), affine


def _assign_splits(rng, groups: np.ndarray, test_fraction: float) -> np.ndarray:
    split = np.empty(len(groups), dtype=object)
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        n_test = int(round(test_fraction * len(idx)))
        split[idx[:n_test]], split[idx[n_test:]] = "test", "train"
    return split


def brain_cohort_job(out_dir: str | Path, *, n_cases: int = 24, seed: int = 0, bias: str = "strong",
                     shape: tuple[int, int, int] = (64, 64, 48), spacing: float = 1.5,
                     group1_fraction: float = 0.5, test_fraction: float = 1 / 3) -> Job[Cohort]:
    """Write a brain cohort (NIfTI + ``manifest.csv``) and return it; yields one event per case."""
    if bias not in BIAS:
        raise ValueError(f"bias must be one of {tuple(BIAS)}, got {bias!r}")
    if n_cases < 2:
        raise ValueError(f"n_cases must be >= 2, got {n_cases}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n1 = int(round(group1_fraction * n_cases))
    groups = rng.permutation(np.array(["Group 1"] * n1 + ["Group 2"] * (n_cases - n1)))
    split = _assign_splits(rng, groups, test_fraction)
    mu, sigma = BIAS[bias]
    rows = []
    yield Progress("template", 0, n_cases, "loading the MNI152 template")
    brain_template()
    for i, g in enumerate(groups):
        cid = f"brain_{i:03d}"
        case_rng = np.random.default_rng([seed, i])
        local = float(case_rng.normal(mu, sigma)) if g == "Group 1" else None
        img, lab, affine = warp_brain_case(case_rng, shape=shape, spacing=spacing, local_mm=local)
        for arr, sub, dtype in ((img, "images", np.float32), (lab, "labels", np.uint8)):
            with atomic_path(out / sub / f"{cid}.nii.gz") as tmp:
                nii = nib.Nifti1Image(arr.astype(dtype), affine)
                nii.header.set_xyzt_units("mm")
                nib.save(nii, str(tmp))
        rows.append({"case_id": cid, "image": str(out / "images" / f"{cid}.nii.gz"),
                     "label": str(out / "labels" / f"{cid}.nii.gz"), "split": split[i], "group": g,
                     "sex": "F" if case_rng.random() < 0.5 else "M", "age": int(case_rng.integers(20, 81)),
                     "local_deformation_mm": round(local, 3) if local is not None else 0.0})
        yield Progress("cases", i + 1, n_cases, cid)
    cohort = Cohort(pd.DataFrame(rows), "nifti", {"caudate": (1,)}, f"brain-{bias}-seed{seed}",
                    [f"synthetic brain cohort: seed {seed}, {bias} bias (mu={mu}, sigma={sigma} mm), "
                     f"{n1} Group 1 / {n_cases - n1} Group 2, grid {shape} at {spacing} mm"], out)
    write_manifest(cohort, out / "manifest.csv")
    return cohort


# --------------------------------------------------------------------------- fundus
RACES = ("Asian", "Black", "White")


def fundus_case(rng: np.random.Generator, *, size: int, race: int) -> tuple[np.ndarray, np.ndarray]:
    """One SLO-like fundus image ``(size, size)`` uint8 and FairSeg-coded mask (0/−1/−2) int8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    fov = (yy - c) ** 2 + (xx - c) ** 2 <= (0.48 * size) ** 2
    illum = 0.30 + 0.08 * np.cos((xx - c) / size * np.pi) + 0.04 * rng.standard_normal()
    img = np.where(fov, illum, 0.02).astype(np.float32)
    cy, cx = c + rng.uniform(-0.06, 0.06, 2) * size
    r_disc = rng.uniform(0.11, 0.14) * size
    aspect = rng.uniform(0.9, 1.1)
    cdr = np.clip(rng.normal(0.62, 0.08) if race == 1 else rng.normal(0.45, 0.07), 0.2, 0.85)
    contrast = rng.normal(0.20, 0.04) if race == 1 else rng.normal(0.32, 0.04)
    ell = ((yy - cy) / (r_disc * aspect)) ** 2 + ((xx - cx) / r_disc) ** 2
    disc, cup = ell <= 1.0, ell <= cdr ** 2
    img += contrast * np.exp(-np.maximum(ell - 1.0, 0) * 6) * (ell <= 1.6)
    img += 0.6 * contrast * cup
    for _ in range(4):  # vessels leaving the disc
        ang = rng.uniform(0, 2 * np.pi)
        t = np.linspace(0, 0.5 * size, 200)
        bend = rng.uniform(-0.004, 0.004)
        vy = cy + t * np.sin(ang + bend * t)
        vx = cx + t * np.cos(ang + bend * t)
        keep = (vy >= 0) & (vy < size) & (vx >= 0) & (vx < size)
        img[vy[keep].astype(int), vx[keep].astype(int)] -= 0.12
    img = ndimage.gaussian_filter(img, 0.8) + rng.normal(0, 0.02, img.shape)
    mask = np.zeros((size, size), dtype=np.int8)
    mask[disc] = -1
    mask[cup] = -2
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def fundus_cohort_job(out_dir: str | Path, *, n_cases: int = 60, seed: int = 0, size: int = 128,
                      test_fraction: float = 1 / 3) -> Job[Cohort]:
    """Write a Harvard-FairSeg-style cohort (``data_XXXXX.npz``, ``train.txt``/``test.txt``)."""
    if n_cases < 2:
        raise ValueError(f"n_cases must be >= 2, got {n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    races = rng.choice(3, size=n_cases, p=[0.2, 0.25, 0.55])
    split = _assign_splits(rng, races, test_fraction)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for i in range(n_cases):
        case_rng = np.random.default_rng([seed, i])
        img, mask = fundus_case(case_rng, size=size, race=int(races[i]))
        name = f"data_{i:05d}.npz"
        attrs = {
            "age": np.float64(np.clip(case_rng.normal(62, 12), 20, 95).round(1)),
            "gender": np.int64(case_rng.integers(0, 2)),
            "race": np.int64(races[i]),
            "ethnicity": np.int64(case_rng.choice([0, 1, -1], p=[0.85, 0.1, 0.05])),
            "language": np.int64(case_rng.choice([0, 1, 2, -1], p=[0.8, 0.1, 0.05, 0.05])),
            "maritalstatus": np.int64(case_rng.choice([0, 1, 2, 3, 4, -1], p=[0.5, 0.2, 0.1, 0.1, 0.05, 0.05])),
        }
        with atomic_path(out / name) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, slo_fundus=img, disc_cup_mask=mask, pid=np.str_(f"P{seed:03d}{i:05d}"), **attrs)
        lists[split[i]].append(name)
        yield Progress("cases", i + 1, n_cases, name)
    for key, names in lists.items():
        with atomic_path(out / f"{key}.txt") as tmp:
            tmp.write_text("".join(f"{n}\n" for n in names))
    from .readers import open_cohort

    return open_cohort(out, kind="fairseg")


def make_sample(kind: str, out_dir: str | Path, **kwargs) -> Cohort:
    """Generate a sample cohort inline (``kind`` is ``"brain"`` or ``"fundus"``)."""
    jobs = {"brain": brain_cohort_job, "fundus": fundus_cohort_job}
    if kind not in jobs:
        raise ValueError(f"sample kind must be one of {tuple(jobs)}, got {kind!r}")
    return run_job(jobs[kind](out_dir, **kwargs))


def cache_dir() -> Path:
    """Where generated sample cohorts are kept (``$FAIRSEG_CACHE`` or ``~/.cache/napari-fairseg``)."""
    return Path(os.environ.get("FAIRSEG_CACHE") or Path.home() / ".cache" / "napari-fairseg")


def sample_cohort(kind: str) -> Cohort:
    """The sample cohort of ``kind`` (seed 0, default size), generated into :func:`cache_dir` on
    first use — the installed plugin needs no source tree.

    Generation writes into a temporary sibling folder that is renamed into place when complete,
    so an interrupted first use leaves no half-written sample behind.
    """
    from .readers import open_cohort

    name = {"brain": "brain-strong-seed0-ndefault", "fundus": "fundus-fairseg-seed0-ndefault"}.get(kind)
    if name is None:
        raise ValueError(f"sample kind must be 'brain' or 'fundus', got {kind!r}")
    where = cache_dir() / name
    if not where.is_dir():
        tmp = where.with_name(f".{name}.{os.getpid()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        make_sample(kind, tmp, seed=0)
        try:
            tmp.rename(where)
        except OSError:  # another process finished first: use its sample
            shutil.rmtree(tmp, ignore_errors=True)
    return open_cohort(where / "manifest.csv" if kind == "brain" else where)

