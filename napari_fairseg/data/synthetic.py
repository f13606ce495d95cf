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

**Breast** (MAMA-MIA layout, seed 004). Fat-suppressed T1 DCE-MRI-like volumes at real
size (default 448×448×120 voxels of 0.7×0.7×1.5 mm), patient prone: a thorax (skin,
subcutaneous fat, pectoral muscle, lungs, an enhancing heart) and two breasts hanging
anteriorly, each holding fibroglandular tissue (FGT) whose share of the breast follows the
BI-RADS density category (:data:`FGT_FRACTION`: a 10 %, b 35 %, c 60 %, d 82 %; a smooth random
field thresholded at that quantile, denser at the centre, with a fat layer in front of the
muscle). One irregular lesion (radius 6–14 mm) sits in one breast. Three phases: pre-contrast
(lesion ≈ FGT) and two post-contrast phases in which the lesion enhances (wash-in E, then
E·U(0.85, 1.1)) and the FGT shows background parenchymal enhancement (BPE, then 1.5·BPE).
A multiplicative bias field (smooth, brighter anteriorly near the breast coil), Gaussian
noise (σ = 0.015, magnitude taken as MRI magnitude images are) and a per-case scanner gain
(int16 values, a few hundred to ~2,000) finish each phase. Anatomy is laid out on a nominal
314×314×180 mm field of view whatever the grid, so small test grids show the same scene.

**The documented group effect: denser breasts give lower lesion contrast.** The lesion's
wash-in falls and the parenchyma's enhancement rises with density (:data:`LESION_ENHANCEMENT`
a 0.60, b 0.48, c 0.36, d 0.24 ± 0.04; :data:`PARENCHYMAL_ENHANCEMENT` a 0.04 … d 0.13, in
units where fat is 0.2 and FGT 0.45 before contrast), and in a dense breast the lesion is
surrounded by FGT rather than fat: the lesion stands out less in the first post-contrast
phase (the "masking" of dense breasts), so a model trained on the cohort segments dense
breasts worse. Age falls with density (means 60, 55, 50, 46 years), menopause follows age
(post from about 51); ethnicity is drawn independently of everything (a negative control).

Files (MAMA-MIA layout, METHODS.md §4): ``images/<pid>/<pid>_000{0,1,2}.nii.gz``,
``segmentations/expert/<pid>.nii.gz``, ``patient_info_files/<pid>.json``,
``clinical_and_imaging_info.xlsx`` (sheet ``dataset_info``: ``patient_id`` upper-case,
``dataset``, ``age``, ``menopause``, ``breast_density``, ``ethnicity``) and
``train_test_splits.csv`` (``train_split`` / ``test_split``, stratified by density). Three
synthetic sites store their files differently (:data:`BREAST_SITES`): ``SIMA`` in RAS,
``SIMB`` in LPS (the in-plane axes flipped, as DICOM-derived files often are) and ``SIMC``
with permuted axes (P, S, L); each file's affine matches its array, so every case shows the
same anatomy in world coordinates. The breast box in the JSON,
``primary_lesion.breast_coordinates`` = ``{x_min, x_max, y_min, y_max, z_min, z_max}``, uses
the real dataset's convention: indices of SimpleITK's array (``GetArrayFromImage(img)[x_min:
x_max, y_min:y_max, z_min:z_max]``, as the challenge's own scripts slice it), i.e. nibabel's
``data[z_min:z_max, y_min:y_max, x_min:x_max]``; min inclusive, max exclusive (see
:func:`~.readers.read_breast_box`). It bounds both breasts.

All three are deterministic for a given seed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import os
import shutil
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ..options import BRAIN_FIELDS, BRAIN_MODALITIES
from ..progress import Job, Progress, run_job
from .atomic import atomic_path
from .manifest import Cohort, write_manifest

BIAS = {"strong": (4.0, 2.0), "weak": (2.0, 2.0)}
#: Box (MNI mm) around the left caudate head and body, medial to the internal capsule.
CAUDATE_BOX = ((-22.0, -4.0), (-8.0, 28.0), (-4.0, 26.0))


def _template_file(name: str) -> Path:
    return Path(str(importlib.resources.files("nilearn.datasets") / "data" / name))


@functools.lru_cache(maxsize=2)
def _tissue_map(tissue: str) -> np.ndarray:
    """The template's ``gm`` or ``wm`` probability map, scaled to a maximum of 1 (X, Y, Z)."""
    prob = np.asarray(nib.load(_template_file(f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz")).dataobj,
                      dtype=np.float32)
    return prob / max(float(prob.max()), 1e-6)


@functools.lru_cache(maxsize=1)
def brain_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1 mm MNI152 (2009a) T1 in [0, 1], the derived left-caudate mask and their affine."""
    t1_img = nib.load(_template_file("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    gm = _tissue_map("gm")
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


#: T2-weighted-like contrast of the tissue classes, in [0, 1]: fluid bright, white matter dark
T2_CONTRAST = {"csf": 1.0, "gm": 0.55, "wm": 0.3}


@functools.lru_cache(maxsize=1)
def brain_t2_template() -> np.ndarray:
    """A T2-weighted-like image of the same template, in [0, 1] (X, Y, Z), from its own tissue maps.

    Grey- and white-matter probabilities are nilearn's (ICBM 2009a, beside the T1); cerebrospinal
    fluid is what is left of the brain (the T1's non-zero voxels), ``max(0, 1 − gm − wm)``. Each
    voxel mixes the classes' :data:`T2_CONTRAST` by their probabilities, so ventricles and sulci
    are bright, cortex mid-grey and white matter dark — the reverse of the T1 — and the caudate
    (grey matter beside a bright ventricle) keeps its place and shape.
    """
    t1, _, _ = brain_template()
    gm, wm = _tissue_map("gm"), _tissue_map("wm")
    brain = (t1 > 0).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0, 1) * brain
    t2 = T2_CONTRAST["csf"] * csf + T2_CONTRAST["gm"] * gm * brain + T2_CONTRAST["wm"] * wm * brain
    return np.clip(t2, 0, 1).astype(np.float32)


def _smooth_field(rng, shape, n_ctrl, amplitude):
    """A smooth random 3-component displacement field (mm) on ``shape``: normal control values
    on an ``n_ctrl`` grid, zoomed by cubic splines (``ndimage.zoom(order=3, mode="nearest")``).

    The spline is separable, so the zoom is one small matrix per axis — each column the zoom of
    a unit vector — applied in turn: the same field as a 3D zoom, ~100× faster on a whole head.
    """
    coarse = rng.normal(0.0, amplitude, size=(3, *n_ctrl))
    mats = [ndimage.zoom(np.eye(n), (s / n, 1), order=3, mode="nearest")[:s] for s, n in zip(shape, n_ctrl,
                                                                                         strict=True)]
    return np.einsum("ai,bj,ck,nijk->nabc", *mats, coarse, optimize=True)


def _rotation(rng, max_deg):
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


#: control points of the smooth displacement and bias fields: the caudate field has (5, 5, 4)
#: and (3, 3, 3) whatever its shape (as every cohort before the whole field); the whole field
#: keeps the default caudate grid's spacing of them (19.2, 19.2, 18 mm and 32 mm)
_WARP_CTRL, _BIAS_CTRL, _WARP_MM, _BIAS_MM = (5, 5, 4), (3, 3, 3), (19.2, 19.2, 18.0), 32.0


#: case-id prefix of each brain field
BRAIN_PREFIX = {"caudate": "brain", "whole": "head"}


def brain_grid(field: str, *, shape=(64, 64, 48), spacing: float = 1.5) -> tuple[tuple[int, ...], np.ndarray]:
    """The output grid of a brain case: ``(shape, affine)``, RAS, ``spacing`` mm isotropic.

    ``caudate``: ``shape`` voxels centred on the template caudate's centroid. ``whole``: the
    template's whole field of view (197×233×189 mm, scalp and background included), ``shape``
    ignored: what a whole-head scan shows.
    """
    if field not in BRAIN_FIELDS:
        raise ValueError(f"field must be one of {BRAIN_FIELDS}, got {field!r}")
    t1, caudate, t_aff = brain_template()
    if field == "caudate":
        centre = (t_aff @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1.0])[:3]
        shape = tuple(int(s) for s in shape)
    else:
        extent = np.abs(t_aff[:3, :3]).sum(axis=1) * (np.array(t1.shape) - 1)
        centre = (t_aff @ np.r_[(np.array(t1.shape) - 1) / 2, 1.0])[:3]
        shape = tuple(int(np.ceil(e / spacing)) + 1 for e in extent)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2
    return shape, affine


def warp_brain_case(rng: np.random.Generator, *, shape, spacing, local_mm: float | None,
                    local_radius: float = 7.0, field: str = "caudate", modality: str = "t1"
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One brain case: returns ``(t1 (X, Y, Z) float32, label (X, Y, Z) uint8, affine)``.

    The output grid (``spacing`` mm, RAS) is :func:`brain_grid`'s for ``field``. A sample at
    world point x is read from the template at A(x − c) + c + u_global(x) + u_local(x), with c
    the template caudate's centroid, A a random rotation and scaling, u_global a smooth random
    field (control points every ~19 mm) and u_local = s·(x − c)/r·exp(½ − |x − c|²/(2r²)),
    which peaks at s mm at |x − c| = r. ``modality`` ``t2`` reads :func:`brain_t2_template`
    instead of the T1.
    """
    t1, caudate, t_aff = brain_template()
    if modality == "t2":
        t1 = brain_t2_template()
    elif modality != "t1":
        raise ValueError(f"modality must be one of {BRAIN_MODALITIES}, got {modality!r}")
    t_inv = np.linalg.inv(t_aff)
    centre = (t_aff @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1.0])[:3]
    shape, affine = brain_grid(field, shape=shape, spacing=spacing)
    n_warp, n_bias = _WARP_CTRL, _BIAS_CTRL
    if field == "whole":
        extent = spacing * np.array(shape)
        n_warp = tuple(round(e / m) for e, m in zip(extent, _WARP_MM, strict=True))
        n_bias = tuple(round(e / _BIAS_MM) for e in extent)
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ grid + affine[:3, 3:4]
    rot = _rotation(rng, 4.0) * rng.uniform(0.96, 1.04)
    src = rot @ (world - centre[:, None]) + centre[:, None]
    src += _smooth_field(rng, shape, n_warp, 2.0).reshape(3, -1)
    if local_mm is not None:
        rel = world - centre[:, None]
        r2 = (rel ** 2).sum(axis=0)
        src += local_mm * rel / local_radius * np.exp(0.5 - r2 / (2 * local_radius ** 2))
    vox = t_inv[:3, :3] @ src + t_inv[:3, 3:4]
    img = ndimage.map_coordinates(t1, vox, order=1, mode="constant", cval=0.0).reshape(shape)
    lab = ndimage.map_coordinates(caudate.astype(np.float32), vox, order=1, mode="constant").reshape(shape)
    bias_field = 1.0 + _smooth_field(rng, shape, n_bias, 0.04)[0]
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
                     group1_fraction: float = 0.5, test_fraction: float = 1 / 3,
                     field: str = "caudate", only: Collection[str] | None = None,
                     modality: str = "t1") -> Job[Cohort]:
    """Write a brain cohort (NIfTI + ``manifest.csv``) and return it; yields one event per case.

    ``field`` (:data:`BRAIN_FIELDS`): ``caudate``, ``shape`` voxels around the caudate (the
    sample's default), or ``whole``, the template's whole field of view at ``spacing`` (132×156×127
    voxels at 1.5 mm): whole-head scans, on which a model learns what is *not* the caudate.

    ``modality`` (:data:`BRAIN_MODALITIES`): ``t1``, or ``t2`` — the same anatomy with a
    T2-weighted-like contrast (:func:`brain_t2_template`), its own bias field and noise, warped by
    *other* subjects' deformations than the T1 cohort of the same seed (each case draws from
    ``[seed, i, 2]`` instead of ``[seed, i]``): a target domain for cross-modality adaptation
    (seed 002), with the same groups, splits and Group 1 deformation law.

    Case ids are ``brain_<i>`` for the caudate field and ``head_<i>`` for the whole one, with
    ``_t2`` before the number for T2 (``brain_t2_<i>``), so any of them can share a manifest. ``only``: write (and list in the manifest) only these case ids. Every case draws from its own
    seed, so each is exactly the case the whole cohort holds, with its group and split: a part
    of a large cohort can be made again without the rest.
    """
    if bias not in BIAS:
        raise ValueError(f"bias must be one of {tuple(BIAS)}, got {bias!r}")
    if modality not in BRAIN_MODALITIES:
        raise ValueError(f"modality must be one of {BRAIN_MODALITIES}, got {modality!r}")
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
    shape = brain_grid(field, shape=shape, spacing=spacing)[0]
    for i, g in enumerate(groups):
        cid = f"{BRAIN_PREFIX[field]}{'' if modality == 't1' else '_' + modality}_{i:03d}"
        if only is not None and cid not in only:
            continue
        case_rng = np.random.default_rng([seed, i] if modality == "t1" else [seed, i, 2])
        local = float(case_rng.normal(mu, sigma)) if g == "Group 1" else None
        img, lab, affine = warp_brain_case(case_rng, shape=shape, spacing=spacing, local_mm=local, field=field,
                                           modality=modality)
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
    name = f"brain-{bias}-seed{seed}" if modality == "t1" else f"brain-{modality}-{bias}-seed{seed}"
    cohort = Cohort(pd.DataFrame(rows), "nifti", {"caudate": (1,)}, name,
                    [f"synthetic brain cohort: seed {seed}, {bias} bias (mu={mu}, sigma={sigma} mm), "
                     f"{n1} Group 1 / {n_cases - n1} Group 2, grid {shape} at {spacing} mm ({field} field of view), "
                     f"{modality.upper()} contrast"], out)
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


# --------------------------------------------------------------------------- breast (MAMA-MIA layout)
DENSITIES = ("a", "b", "c", "d")
#: BI-RADS density category → share of the breast that is fibroglandular tissue.
FGT_FRACTION = {"a": 0.10, "b": 0.35, "c": 0.60, "d": 0.82}
#: The group effect: lesion wash-in (first post-contrast phase) by density, falling …
LESION_ENHANCEMENT = {"a": 0.60, "b": 0.48, "c": 0.36, "d": 0.24}
#: … while the background parenchymal enhancement of the FGT rises.
PARENCHYMAL_ENHANCEMENT = {"a": 0.04, "b": 0.07, "c": 0.10, "d": 0.13}
#: Share of each density category in a cohort (every category appears from 4 cases on).
DENSITY_SHARE = (0.15, 0.35, 0.35, 0.15)
#: Mean age by density (denser breasts are younger).
DENSITY_AGE = {"a": 60.0, "b": 55.0, "c": 50.0, "d": 46.0}
ETHNICITIES = ("caucasian", "african american", "asian", "hispanic")
#: Synthetic sites (the ``dataset`` column): how each stores its files (nibabel axis codes of
#: the array) and its scanner gain range; cases are assigned to the sites in turn.
BREAST_SITES = {"SIMA": (("R", "A", "S"), (900.0, 1300.0)),
                "SIMB": (("L", "P", "S"), (500.0, 800.0)),
                "SIMC": (("P", "S", "L"), (1200.0, 1700.0))}
#: The field of view (mm) the anatomy is laid out on, whatever the grid.
NOMINAL_FOV = (313.6, 313.6, 180.0)
BREAST_SHAPE = (448, 448, 120)
BREAST_SPACING = (0.7, 0.7, 1.5)
#: Cases of ``fairseg sample breast`` / ``sample_cohort("breast")``: a first use of about half
#: a minute and 550 MB (each full-size case: ~4.5 s of CPU, ~70 MB, ~0.9 GB of memory to make).
BREAST_CASES = 8
#: Tissue intensities before contrast (fat-suppressed T1, relative units) and their
#: enhancement in the two post-contrast phases (FGT and lesion: the tables above).
TISSUE = {  # name: (pre, phase-1 enhancement, phase-2 enhancement)
    "air": (0.0, 0.0, 0.0), "skin": (0.40, 0.04, 0.06), "fat": (0.20, 0.01, 0.015),
    "muscle": (0.33, 0.06, 0.10), "lung": (0.05, 0.0, 0.0), "mediastinum": (0.25, 0.05, 0.08),
    "heart": (0.22, 0.60, 0.45),
}
FGT_PRE, LESION_PRE, NOISE_SIGMA = 0.45, 0.42, 0.015


def _bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """``(n_out, n_ctrl)`` cubic B-spline weights spreading ``n_ctrl`` control points over ``n_out`` samples."""
    u = (np.arange(n_out) + 0.5) / n_out * (n_ctrl - 1)
    i0 = np.floor(u).astype(int)
    t = u - i0
    w = np.stack([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3], 1) / 6
    m = np.zeros((n_out, n_ctrl), np.float32)
    for k in range(4):
        np.add.at(m, (np.arange(n_out), np.clip(i0 - 1 + k, 0, n_ctrl - 1)), w[:, k])
    return m


def smooth_field(rng: np.random.Generator, shape, n_ctrl) -> np.ndarray:
    """A smooth random 3D field on ``shape`` (float32, unit variance).

    White noise on a coarse ``n_ctrl`` grid, upsampled by separable cubic B-splines: three
    matrix products, so a full 448×448×120 field costs a fraction of a second.
    """
    n_ctrl = [max(int(c), 2) for c in n_ctrl]
    out = rng.standard_normal(n_ctrl).astype(np.float32)
    mx, my, mz = (_bspline_matrix(int(n), c) for n, c in zip(shape, n_ctrl, strict=True))
    out = np.tensordot(mx, out, axes=(1, 0))  # (X, cy, cz)
    out = np.tensordot(out, my, axes=(1, 1))  # (X, cz, Y)
    out = np.tensordot(out, mz, axes=(1, 1))  # (X, Y, Z)
    sample = out[::3, ::3, ::3]  # statistics of a subsample: as good, and 27× cheaper
    out -= sample.mean()
    out /= max(float(sample.std()), 1e-6)
    return out


def _soft(signed_mm, voxel_mm: float) -> np.ndarray:
    """Partial-volume weight of a surface at signed distance ``signed_mm`` (inside > 0)."""
    return np.clip(np.asarray(signed_mm, np.float32) / voxel_mm + 0.5, 0.0, 1.0)


class _Scene:
    """The nominal-mm coordinates of a grid, and boxes of it."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        self.axes = [(((np.arange(n) + 0.5) / n - 0.5) * f).astype(np.float32)
                     for n, f in zip(self.shape, NOMINAL_FOV, strict=True)]
        self.voxel = min(f / n for n, f in zip(self.shape, NOMINAL_FOV, strict=True))

    def box(self, lo, hi) -> tuple[slice, slice, slice]:
        """The voxels whose centres may lie between the corners ``lo`` and ``hi`` (mm), clipped."""
        out = []
        for a, (n, f) in enumerate(zip(self.shape, NOMINAL_FOV, strict=True)):
            start = int(np.floor((lo[a] / f + 0.5) * n - 0.5))
            stop = int(np.ceil((hi[a] / f + 0.5) * n - 0.5)) + 1
            out.append(slice(min(max(start, 0), n - 1), min(max(stop, 1), n)))
        return tuple(out)

    def grid(self, sl):
        """Broadcastable ``(gx, gy, gz)`` mm coordinates of a box."""
        return tuple(g[s].reshape([-1 if a == b else 1 for b in range(3)])
                     for a, (g, s) in enumerate(zip(self.axes, sl, strict=True)))

    def index(self, point) -> tuple[int, int, int]:
        return tuple(int(np.clip(np.rint((c / f + 0.5) * n - 0.5), 0, n - 1))
                     for c, n, f in zip(point, self.shape, NOMINAL_FOV, strict=True))


def _extent(mask: np.ndarray, offset=(0, 0, 0)) -> list[tuple[int, int]] | None:
    """``[(start, stop)]`` per axis of a mask's bounding box (shifted by ``offset``), or None if empty."""
    out = []
    for a in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)))
        if not hit.size:
            return None
        out.append((int(hit[0]) + offset[a], int(hit[-1]) + 1 + offset[a]))
    return out


def _ellipsoid(grid, centre, radii):
    """Normalised radius of an axis-aligned ellipsoid at the box's voxels (1 on its surface)."""
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)))


def _breast_radius(grid, centre, radii):
    """Normalised radius of a breast: an ellipsoid from the chest wall (``centre``) forward
    (+y), narrowing by up to 35 % towards the nipple."""
    taper = 1 - 0.35 * np.clip((grid[1] - centre[1]) / radii[1], 0, 1)
    return _ellipsoid(grid, centre, (radii[0] * taper, radii[1], radii[2] * taper))


def breast_case(rng: np.random.Generator, *, shape=BREAST_SHAPE, density: str = "b"
                ) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice, slice], dict]:
    """One breast DCE-MRI case on a RAS grid (the module docstring describes the scene).

    Returns
    -------
    phases : numpy.ndarray
        ``(3, X, Y, Z)`` float32 in relative units (FGT ≈ 0.45 before contrast), bias field
        and noise included, scanner gain not.
    label : numpy.ndarray
        ``(X, Y, Z)`` uint8 lesion mask, never empty.
    box : tuple of slice
        The bounding box of both breasts, in this array's axes.
    info : dict
        The case's drawn parameters (FGT share, lesion enhancement and radius, ...).
    """
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes of at least 4 voxels, got {shape}")
    scene = _Scene(shape)
    vox = scene.voxel
    x, y, _ = scene.axes

    # ---- thorax: an ellipse in the axial plane, the same on every slice
    ax, ay = rng.uniform(150, 175), rng.uniform(95, 120)
    yc = rng.uniform(-30, -5) - ay  # centre; its anterior pole is the chest wall at x = 0
    depth = (1.0 - np.sqrt((x[:, None] / ax) ** 2 + ((y[None, :] - yc) / ay) ** 2)) * ay  # ≈ mm under the skin
    base = np.zeros((3, *shape[:2]), np.float32)  # (pre, e1, e2) of the axial slice
    for name, start in (("skin", 0.0), ("fat", 2.0), ("muscle", 10.0), ("lung", rng.uniform(22, 28))):
        base += _soft(depth - start, vox) * (np.asarray(TISSUE[name], np.float32)[:, None, None] - base)
    mediastinum = _soft((1 - np.sqrt(((x[:, None] + 10) / 45) ** 2 + ((y[None, :] - yc) / (0.75 * ay)) ** 2)) * 45,
                        vox) * _soft(depth - 30.0, vox)
    base += mediastinum * (np.asarray(TISSUE["mediastinum"], np.float32)[:, None, None] - base)
    regions = []  # (box, weight, (pre, e1, e2)): blended, in order, over what lies beneath

    # ---- heart: an ellipsoid in the mediastinum
    hc = np.array([rng.uniform(-30, -15), yc + 0.5 * ay, rng.uniform(-60, -25)])
    hr = np.array([rng.uniform(45, 55), min(0.35 * ay, 42.0), rng.uniform(40, 50)])
    sl = scene.box(hc - hr, hc + hr)
    w = _soft((1 - _ellipsoid(scene.grid(sl), hc, hr)) * hr.min(), vox) * _soft(depth[sl[:2]] - 30.0, vox)[..., None]
    regions.append((sl, w, TISSUE["heart"]))

    # ---- breasts: ellipsoids on the chest wall, in front of the thorax; FGT inside
    fgt_share = float(np.clip(FGT_FRACTION[density] + rng.normal(0, 0.03), 0.03, 0.95))
    bpe = float(max(PARENCHYMAL_ENHANCEMENT[density] + rng.normal(0, 0.015), 0.0))
    half, size = rng.uniform(60, 76), rng.uniform(0.8, 1.2)
    breasts, extents = [], []
    for side in (1.0, -1.0):
        asym = rng.uniform(0.92, 1.08)
        xb = side * half
        ysurf = yc + ay * np.sqrt(max(0.0, 1 - (xb / ax) ** 2))
        radii = np.array([min(rng.uniform(45, 58) * size * asym, half - 8),
                          min(rng.uniform(40, 75) * size * asym, 0.5 * NOMINAL_FOV[1] - 8 - ysurf),
                          min(rng.uniform(45, 62) * size * asym, 0.5 * NOMINAL_FOV[2] - 12)])
        centre = np.array([xb, ysurf, rng.uniform(-8, 8)])
        sl = scene.box(centre - radii, centre + radii)
        rho = _breast_radius(scene.grid(sl), centre, radii)
        front = -depth[sl[:2]][..., None]  # mm in front of the thorax surface
        w = _soft((1 - rho) * radii.min(), vox) * _soft(front, vox)
        ext = [(s.stop - s.start) * f / n for s, n, f in zip(sl, shape, NOMINAL_FOV, strict=True)]
        field = (smooth_field(rng, w.shape, [e / 14 + 3 for e in ext])  # lobes (~14 mm) …
                 + 0.5 * smooth_field(rng, w.shape, [e / 5 + 3 for e in ext])  # … and strands (~5 mm)
                 + 1.8 * (1 - rho)  # denser centrally
                 - 2.5 * np.exp(-np.clip(front, 0, None) / 6.0))  # a fat layer in front of the muscle
        inside = w > 0.5
        thr = float(np.quantile(field[inside][::3], 1 - fgt_share)) if inside.any() else 0.0
        fgt = 0.5 + 0.5 * np.tanh((field - thr) / 0.24)  # a soft threshold
        skin = _soft(2.0 - (1 - rho) * radii.min(), vox)  # the breast's outer 2 mm
        vals = []
        for fat_v, fgt_v, skin_v in zip(TISSUE["fat"], (FGT_PRE, bpe, 1.5 * bpe), TISSUE["skin"], strict=True):
            tissue = fat_v + (fgt_v - fat_v) * fgt
            vals.append((tissue + (skin_v - tissue) * skin).astype(np.float32))
        regions.append((sl, w, vals))
        breasts.append((centre, radii, sl))
        extents.append(_extent(inside, offset=[s.start for s in sl]))

    # ---- lesion: an irregular blob in one breast, in front of the chest wall
    centre, radii, _ = breasts[int(rng.integers(2))]
    rx, ry, rz = radii
    radius = float(rng.uniform(6.0, max(6.5, min(14.0, ry / 2.5))))
    oy = rng.uniform(min(radius + 4, 0.6 * ry), 0.7 * ry)
    rem = 0.7 * np.sqrt(max(1 - (oy / ry) ** 2, 0.0))
    lc = centre + np.array([rng.uniform(-1, 1) * rem * rx, oy, rng.uniform(-1, 1) * rem * rz])
    sl = scene.box(lc - 1.6 * radius, lc + 1.6 * radius)
    grid = scene.grid(sl)
    rel = np.stack(np.broadcast_arrays(*((g - c) / radius for g, c in zip(grid, lc, strict=True))))
    dist = np.sqrt(((rel / rng.uniform(0.75, 1.25, 3)[:, None, None, None]) ** 2).sum(axis=0))
    unit = rel / np.maximum(np.sqrt((rel ** 2).sum(axis=0)), 1e-6)
    bumps = sum(rng.uniform(0.05, 0.14) * np.cos(np.tensordot(rng.normal(0, 2.0, 3), unit, axes=(0, 0))
                                                   + rng.uniform(0, 2 * np.pi)) for _ in range(4))
    r_eff = dist / (1 + bumps)
    in_breast = (_soft((1 - _breast_radius(grid, centre, radii)) * radii.min(), vox)
                 * _soft(-depth[sl[:2]][..., None], vox))
    enhancement = float(max(LESION_ENHANCEMENT[density] + rng.normal(0, 0.04), 0.05))
    washout = float(rng.uniform(0.85, 1.1))
    rim = 0.75 + 0.35 * np.clip(r_eff, 0, 1) ** 2  # enhances most at its rim
    regions.append((sl, _soft((1 - r_eff) * radius, vox) * in_breast,
                    (LESION_PRE, enhancement * rim, washout * enhancement * rim)))
    label = np.zeros(shape, np.uint8)
    label[sl] = (r_eff <= 1) & (in_breast > 0.5)
    if not label.any():  # a grid too coarse for the lesion: keep its centre voxel
        label[scene.index(lc)] = 1

    # ---- the phases: background, regions, bias field (shared by the phases), noise
    bias = np.exp(0.08 * smooth_field(rng, shape, (4, 4, 3)))
    bias *= (1 + 0.12 * y / (0.5 * NOMINAL_FOV[1]))[None, :, None]  # brighter near the breast coil
    phases = np.empty((3, *shape), np.float32)
    for p in range(3):
        vol = phases[p]
        vol[...] = (base[0] + (base[p] if p else 0))[:, :, None]
        for rsl, w, vals in regions:
            value = vals[0] + (vals[p] if p else 0)
            vol[rsl] += w * (value - vol[rsl])
        vol *= bias
        vol += rng.standard_normal(shape, dtype=np.float32) * np.float32(NOISE_SIGMA)
        np.abs(vol, out=vol)  # a magnitude image
    extents = [e for e in (*extents, _extent(label)) if e is not None]
    box = tuple(slice(max(min(e[a][0] for e in extents) - 1, 0), min(max(e[a][1] for e in extents) + 1, n))
                for a, n in enumerate(shape))  # both breasts (and the lesion), one voxel of margin
    info = {"fgt_fraction": round(fgt_share, 4), "lesion_enhancement": round(enhancement, 4),
            "parenchymal_enhancement": round(bpe, 4), "washout": round(washout, 4),
            "lesion_radius_mm": round(radius, 2)}
    return phases, label, box, info


def _balanced_categories(rng: np.random.Generator, n: int, shares) -> np.ndarray:
    """``n`` density categories in the proportions ``shares`` (largest remainder; every
    category at least once when ``n`` allows), shuffled."""
    want = np.asarray(shares, float) * n
    counts = np.floor(want).astype(int)
    for k in np.argsort(-(want - counts))[: n - counts.sum()]:
        counts[k] += 1
    while n >= len(counts) and (counts == 0).any():
        counts[int(np.argmax(counts))] -= 1
        counts[int(np.argmin(counts))] += 1
    return rng.permutation(np.repeat(np.array(DENSITIES), counts))


def _storage(axcodes, shape) -> tuple[np.ndarray, np.ndarray]:
    """The orientation transform from a RAS array to one stored with ``axcodes``, and the
    matrix taking the stored array's voxel indices to the RAS array's."""
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                           nib.orientations.axcodes2ornt(tuple(axcodes)))
    return ornt, nib.orientations.inv_ornt_aff(ornt, shape)


def _stored_box(box, ornt, shape) -> dict[str, int]:
    """A RAS-array box as MAMA-MIA ``breast_coordinates`` of the stored array: nibabel axes
    0, 1, 2 are the dataset's z, y, x (SimpleITK's array order reversed)."""
    ranges = [None] * 3
    for a, s in enumerate(box):
        target, flip = int(ornt[a, 0]), ornt[a, 1] < 0
        ranges[target] = (shape[a] - s.stop, shape[a] - s.start) if flip else (s.start, s.stop)
    out = {}
    for name, (lo, hi) in zip("zyx", ranges, strict=True):
        out[f"{name}_min"], out[f"{name}_max"] = int(lo), int(hi)
    return {k: out[k] for k in ("x_min", "x_max", "y_min", "y_max", "z_min", "z_max")}


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A NIfTI written with gzip level 1 (about 4× faster than nibabel's default level 6 on
    noisy images, and files are hardly larger) and a fixed gzip time stamp (same bytes for
    the same seed), fsynced."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with open(path, "wb") as fh:
        fh.write(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
        fh.flush()
        os.fsync(fh.fileno())


def _patient_attributes(rng: np.random.Generator, density: str) -> dict:
    age = int(np.clip(np.rint(rng.normal(DENSITY_AGE[density], 8.0)), 28, 85))
    u = rng.random()
    post = rng.random() < 1 / (1 + np.exp(-(age - 51) / 3.0))
    menopause = None if u < 0.05 else "peri" if u < 0.12 else "post" if post else "pre"
    e = int(rng.choice(len(ETHNICITIES) + 1, p=[0.6, 0.15, 0.1, 0.1, 0.05]))
    return {"age": age, "menopause": menopause, "breast_density": density,
            "ethnicity": ETHNICITIES[e] if e < len(ETHNICITIES) else None}


def _write_breast_case(out: Path, partial: Path, i: int, density: str, *, seed: int, shape, spacing) -> dict:
    """Generate case ``i`` and move its files into place (image folder last); return its
    row of the clinical table."""
    site = list(BREAST_SITES)[i % len(BREAST_SITES)]
    axcodes, gains = BREAST_SITES[site]
    pid = f"{site.lower()}_{i:03d}"
    case_rng = np.random.default_rng([seed, i, 0])  # patient and scanner
    attrs = _patient_attributes(case_rng, density)
    gain = float(case_rng.uniform(*gains))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = case_rng.uniform(-10, 10, 3) - np.array(spacing) * (np.array(shape) - 1) / 2
    phases, label, box, info = breast_case(np.random.default_rng([seed, i, 1]), shape=shape, density=density)
    ornt, to_ras = _storage(axcodes, shape)
    stored_affine = affine @ to_ras
    work = partial / pid
    (work / "images").mkdir(parents=True)

    def write(p: int) -> None:  # compression dominates: the four files are written in parallel
        if p < len(phases):
            data, path = np.minimum(phases[p] * gain + 0.5, 32767).astype(np.int16), f"images/{pid}_{p:04d}.nii.gz"
        else:
            data, path = label, f"{pid}.nii.gz"
        _write_nifti(work / path, nib.orientations.apply_orientation(data, ornt), stored_affine)

    with ThreadPoolExecutor(max_workers=min(len(phases) + 1, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(len(phases) + 1)))
    info.update(density=density, storage_axcodes="".join(axcodes), gain=round(gain, 1))
    patient = {"patient_id": pid.upper(),
               "primary_lesion": {"breast_coordinates": _stored_box(box, ornt, shape)},
               "imaging_data": {"bilateral": True, "dataset": site, "site": site,
                                "scanner_manufacturer": "synthetic (napari-fairseg)",
                                "field_strength": 3.0 if site == "SIMC" else 1.5},
               "synthetic": info}
    (work / f"{pid}.json").write_text(json.dumps(patient, indent=2) + "\n")
    os.replace(work / f"{pid}.nii.gz", out / "segmentations" / "expert" / f"{pid}.nii.gz")
    os.replace(work / f"{pid}.json", out / "patient_info_files" / f"{pid}.json")
    if (out / "images" / pid).exists():
        shutil.rmtree(out / "images" / pid)
    os.replace(work / "images", out / "images" / pid)  # the case appears whole
    work.rmdir()
    return {"patient_id": pid.upper(), "dataset": site, **attrs}


def breast_cohort_job(out_dir: str | Path, *, n_cases: int = BREAST_CASES, seed: int = 0,
                      shape: tuple[int, int, int] = BREAST_SHAPE,
                      spacing: tuple[float, float, float] = BREAST_SPACING,
                      test_fraction: float = 1 / 3) -> Job[Cohort]:
    """Write a synthetic breast DCE-MRI cohort in the MAMA-MIA layout and return it.

    Yields one event per case. Case ``i``'s scene is ``breast_case(numpy.random.default_rng([seed,
    i, 1]), shape=shape, density=...)``, stored with its site's axis order and an affine to
    match, so that reorienting a file to RAS by its own affine gives that scene back; its
    attributes, scanner gain and table position come from ``default_rng([seed, i, 0])``.
    Each case is written into ``<out>/.partial/`` and moved into
    place when its five files are complete (its image folder last, by one rename), so a
    cancelled or killed run leaves only whole cases; the clinical table and the split list
    are written (atomically) at the end.

    Parameters
    ----------
    out_dir : str or Path
        The cohort folder (made if needed).
    n_cases : int
        Number of patients (at least 2).
    seed : int
        Everything is a function of the seed: the same seed gives the same files, byte for byte.
    shape : tuple of int
        Voxels of a case on its RAS grid, ``(X, Y, Z)``; cases stored with permuted axes
        have these sizes in their own order.
    spacing : tuple of float
        Voxel size (mm) along X, Y, Z.
    test_fraction : float
        Share of each density category in the test split.
    """
    if n_cases < 2:
        raise ValueError(f"n_cases must be >= 2, got {n_cases}")
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes of at least 4 voxels, got {shape}")
    if len(spacing) != 3 or not min(spacing) > 0:
        raise ValueError(f"spacing must be three positive sizes (mm), got {spacing}")
    out = Path(out_dir)
    for sub in ("images", "segmentations/expert", "patient_info_files"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    partial = out / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    rng = np.random.default_rng(seed)
    densities = _balanced_categories(rng, n_cases, DENSITY_SHARE)
    split = _assign_splits(rng, densities, test_fraction)
    rows, lists = [], {"train": [], "test": []}
    try:
        for i, density in enumerate(densities):
            row = _write_breast_case(out, partial, i, str(density), seed=seed, shape=shape, spacing=spacing)
            rows.append(row)
            lists[split[i]].append(row["patient_id"].lower())
            yield Progress("cases", i + 1, n_cases, row["patient_id"].lower())
    finally:  # also when cancelled between two cases: no work folder stays behind
        shutil.rmtree(partial, ignore_errors=True)
    with atomic_path(out / "clinical_and_imaging_info.xlsx") as tmp:
        pd.DataFrame(rows).to_excel(tmp, sheet_name="dataset_info", index=False)
    with atomic_path(out / "train_test_splits.csv") as tmp:
        pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in
                      (("train_split", lists["train"]), ("test_split", lists["test"]))}).to_csv(tmp, index=False)
    from .readers import open_cohort

    return open_cohort(out, kind="mamamia")


#: Folder of each sample cohort under :func:`cache_dir` (seed 0, default size).
SAMPLE_FOLDERS = {"brain": "brain-strong-seed0-ndefault", "fundus": "fundus-fairseg-seed0-ndefault",
                  "breast": "breast-mamamia-seed0-ndefault"}
SAMPLE_KINDS = tuple(SAMPLE_FOLDERS)


def make_sample(kind: str, out_dir: str | Path, **kwargs) -> Cohort:
    """Generate a sample cohort inline (``kind`` is one of :data:`SAMPLE_KINDS`)."""
    jobs = {"brain": brain_cohort_job, "fundus": fundus_cohort_job, "breast": breast_cohort_job}
    if kind not in jobs:
        raise ValueError(f"sample kind must be one of {tuple(jobs)}, got {kind!r}")
    return run_job(jobs[kind](out_dir, **kwargs))


def cache_dir() -> Path:
    """Where generated sample cohorts are kept (``$FAIRSEG_CACHE`` or ``~/.cache/napari-fairseg``)."""
    return Path(os.environ.get("FAIRSEG_CACHE") or Path.home() / ".cache" / "napari-fairseg")


def sample_cohort(kind: str) -> Cohort:
    """The sample cohort of ``kind`` (seed 0, default size), generated into :func:`cache_dir` on
    first use — the installed plugin needs no source tree. ``breast``: :data:`BREAST_CASES`
    full-size cases, about 550 MB on disk and about 35 s of CPU time on first use (about
    4.5 s a case, half of it gzip; the four files of a case are compressed in parallel).

    Generation writes into a temporary sibling folder that is renamed into place when complete,
    so an interrupted first use leaves no half-written sample behind.
    """
    from .readers import open_cohort

    name = SAMPLE_FOLDERS.get(kind)
    if name is None:
        raise ValueError(f"sample kind must be one of {SAMPLE_KINDS}, got {kind!r}")
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

