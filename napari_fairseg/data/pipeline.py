"""The preprocessing a model was trained with, as MONAI dictionary transforms, and its inverse.

A :class:`Pipeline` declares the deterministic preparation of a case — orientation, target
spacing, crop, percentile clip, intensity normalisation and (2D) image size. The trainer builds
its datasets from :func:`case_items` and :func:`deterministic_transforms`; it stores the pipeline
in the checkpoint (``meta["pipeline"] = pipeline.to_json()``); prediction reads it back with
:func:`pipeline_of`, prepares each case the same way (:func:`prepare`) and brings every output
back to the case's **original grid and affine** with :func:`invert`.

The transforms, in order (each spatial step is MONAI's and recorded in the image's
``applied_operations``, so it can be undone)::

    load          arrays.load_case / load_image: (C, *S) float32 + affine, label (1, *S) int16
    crop          on the stored grid: "foreground" (bounding box of voxels != 0 in any channel),
                  "box" (MAMA-MIA breast box, below) or "none" — MONAI SpatialCrop
    orientation   3D: Orientationd to ``orientation`` (e.g. RAS)
    spacing       3D: Spacingd to ``spacing`` mm, bilinear for the image, nearest for the label
    size          2D: Resized to ``size``, bilinear / nearest
    intensity     per channel: percentile clip, then z-score / min-max, over the tissue (3D) or
                  the foreground (2D)

*Tissue statistics* (``statistics="tissue"``, new 3D pipelines): percentiles, mean and standard
deviation are taken over the channel's voxels above its background level plus 10 % of its
range (:func:`~.intensity.tissue_mask`), and every voxel is clipped and normalised with them. A
brain and the same brain in a larger field of view, with a zero background (a masked template)
or a noisy one (a magnitude MR image), or a crop of it, get nearly the same tissue values.
*Foreground statistics* (``statistics="foreground"``, 2D): over the channel's non-zero voxels
only, and zero voxels stay zero — what MONAI's ``NormalizeIntensityd(nonzero=True,
channel_wise=True)`` does for the z-score; a background of noise counts as foreground here.
Checkpoints written before pipelines existed normalise over the whole image
(``statistics="image"``, :func:`legacy_pipeline`) and keep doing so.

MAMA-MIA breast box
-------------------
``<dataset>/patient_info_files/<pid>.json`` (the case id, else its lower-case form) holds
``{"primary_lesion": {"breast_coordinates": {"x_min", "x_max", "y_min", "y_max", "z_min",
"z_max"}}}``: whole voxel indices of the stored image, end exclusive, named after the axes of
``sitk.GetArrayFromImage(image)``, which reverses the file's voxel axes. The challenge's own
sample submission (MAMA-MIA Challenge 2025) masks its predictions with
``sitk.GetArrayFromImage(seg)[x_min:x_max, y_min:y_max, z_min:z_max]``; in the file's (nibabel's)
axis order — the order of our arrays — the box is therefore
``data[z_min:z_max, y_min:y_max, x_min:x_max]``: the JSON's ``z`` indexes the first stored axis
and its ``x`` the third. The box is clipped to the image, on the stored grid (before
reorientation and resampling).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Crop,
    MapTransform,
    Orientation,
    Orientationd,
    Resize,
    Resized,
    Spacingd,
    SpatialCrop,
    SpatialResample,
)
from monai.transforms.utils import convert_applied_interp_mode, reset_ops_id
from monai.utils import TraceKeys

from ..errors import FairSegError, InputDataError, json_object
from .arrays import CaseData, check_voxels, load_case, load_image
from .intensity import match_channels, normalise_channels
from .kinds import kind_of
from .manifest import KEY_SEP, Cohort, split_channels
from .readers import read_breast_box

#: Version of the JSON written by :meth:`Pipeline.to_json`.
PIPELINE_VERSION = 1
CROPS = ("foreground", "box", "none")
NORMALISE = ("zscore", "minmax", "none")
STATISTICS = ("foreground", "tissue", "image")
#: Target spacings a pipeline (perhaps from a hostile checkpoint) may ask for, in mm.
SPACING_RANGE = (0.05, 50.0)
#: Largest 2D target size per axis, in pixels.
MAX_SIZE = 8192
#: Where a MAMA-MIA case's breast box lives, relative to the dataset folder.
PATIENT_INFO = "patient_info_files"
_AXES = (("L", "R"), ("P", "A"), ("I", "S"))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {_short(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _whole(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {_short(value)}")
    return int(value)


def _sequence(value, name: str, length: int) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != length:
        raise ValueError(f"{name} must be a sequence of {length} values, got {_short(value)}")
    return list(value)


def _check_axcodes(codes) -> str:
    if not isinstance(codes, str) or len(codes) != 3:
        raise ValueError(f"orientation must be three axis codes such as 'RAS', got {_short(codes)}")
    codes = codes.upper()
    axes = sorted(next((i for i, pair in enumerate(_AXES) if c in pair), -1) for c in codes)
    if axes != [0, 1, 2]:
        raise ValueError(f"orientation {codes!r} must name each axis once, one of L/R, P/A and I/S")
    return codes


@dataclass(frozen=True)
class Pipeline:
    """The deterministic preprocessing a model was trained with.

    Stored in its checkpoint as ``meta["pipeline"] = pipeline.to_json()``; read back, validated,
    with :func:`pipeline_of`.

    Attributes
    ----------
    spatial_dims : int
        2 or 3.
    orientation : str or None
        3D: axis codes to reorient to (``"RAS"``); ``None`` keeps the stored axes. Always
        ``None`` for 2D (a 2D pipeline ignores the default).
    spacing : tuple of float or None
        3D target voxel size in mm, one per axis after reorientation; ``None`` keeps the native grid.
    crop : str
        ``foreground`` (bounding box of the non-zero voxels), ``box`` (the MAMA-MIA breast box,
        see the module notes) or ``none``.
    clip : tuple of float or None
        Lower and upper percentile (0–100) at which each channel is clipped; ``None``: no clip.
    normalise : str
        ``zscore``, ``minmax`` (to [0, 1]) or ``none``.
    size : tuple of int or None
        2D: resize every image to this ``(H, W)``; ``None`` keeps the size.
    statistics : str
        ``foreground``: clip and normalisation statistics over each channel's non-zero voxels,
        zeros kept; ``tissue`` (the default of new 3D pipelines): over each channel's tissue
        voxels (:func:`~.intensity.tissue_mask`), every voxel normalised with them — independent
        of the field of view and of a zero or noisy background; ``image``: over the whole image, exactly
        :func:`~napari_fairseg.models.preprocess.normalise_intensity` (checkpoints from before
        pipelines, :func:`legacy_pipeline`).
    """

    spatial_dims: int
    orientation: str | None = "RAS"
    spacing: tuple[float, ...] | None = None
    crop: str = "foreground"
    clip: tuple[float, float] | None = (0.5, 99.5)
    normalise: str = "zscore"
    size: tuple[int, ...] | None = None
    statistics: str = "foreground"

    def __post_init__(self):
        dims = _whole(self.spatial_dims, "spatial_dims")
        if dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {_short(dims)}")
        object.__setattr__(self, "spatial_dims", dims)
        orientation = None if dims == 2 or self.orientation is None else _check_axcodes(self.orientation)
        object.__setattr__(self, "orientation", orientation)
        if self.spacing is not None:
            if dims == 2:
                raise ValueError("spacing applies to 3D volumes; a 2D pipeline resizes with size")
            spacing = tuple(_number(s, "spacing") for s in _sequence(self.spacing, "spacing", 3))
            lo, hi = SPACING_RANGE
            if not all(lo <= s <= hi for s in spacing):
                raise ValueError(f"spacing must lie within {lo} … {hi} mm on every axis, got {spacing}")
            object.__setattr__(self, "spacing", spacing)
        for name, choices in (("crop", CROPS), ("normalise", NORMALISE), ("statistics", STATISTICS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {_short(value)}")
        if self.clip is not None:
            lo, hi = (_number(c, "clip") for c in _sequence(self.clip, "clip", 2))
            if not 0 <= lo < hi <= 100:
                raise ValueError(f"clip must be two percentiles 0 <= lower < upper <= 100, got {(lo, hi)}")
            object.__setattr__(self, "clip", (lo, hi))
        if self.size is not None:
            if dims != 2:
                raise ValueError("size applies to 2D images; a 3D pipeline resamples with spacing")
            size = tuple(_whole(s, "size") for s in _sequence(self.size, "size", 2))
            if not all(1 <= s <= MAX_SIZE for s in size):
                raise ValueError(f"size must be 1 … {MAX_SIZE} pixels per axis, got {size}")
            object.__setattr__(self, "size", size)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-ready fields, tuples as lists."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, with a ``version``): what checkpoints store."""
        return json.dumps({"version": PIPELINE_VERSION, **self.to_dict()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Pipeline:
        """Read :meth:`to_json`'s text back, refusing anything else.

        Raises
        ------
        InputDataError
            Not a JSON object, a newer version, an unknown or missing key, or a value out of
            range (a hostile checkpoint must not make prediction resample to 1 µm or read files).
        """
        data = json_object(text, "pipeline")
        version = data.pop("version", PIPELINE_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= PIPELINE_VERSION:
            raise InputDataError(None, f"pipeline version {_short(version)} is not one this napari-fairseg "
                                 f"reads (1 … {PIPELINE_VERSION}); upgrade the package")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputDataError(None, f"pipeline has unknown key(s) {_short(unknown)}; known: {names}")
        if "spatial_dims" not in data:
            raise InputDataError(None, "pipeline has no 'spatial_dims'")
        try:
            return cls(**data)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputDataError(None, f"pipeline is invalid: {exc}") from exc

    def key(self) -> str:
        """A short stable hash of the pipeline (16 hex digits), for cache folder names."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @property
    def spatial(self) -> bool:
        """Whether any step changes the grid (else :func:`invert` is the identity)."""
        return (self.orientation is not None or self.spacing is not None or self.crop != "none"
                or self.size is not None)


# --------------------------------------------------------------------------- choosing one
def legacy_pipeline(model_config) -> Pipeline:
    """What a checkpoint without ``meta["pipeline"]`` meant.

    No orientation, resampling or crop; whole-image normalisation as ``model_config.intensity``
    (:func:`~napari_fairseg.models.preprocess.normalise_intensity`): the bundled checkpoints
    and every model trained before pipelines keep their behaviour exactly.
    """
    return Pipeline(spatial_dims=model_config.spatial_dims, orientation=None, spacing=None, crop="none",
                    clip=None, normalise=model_config.intensity, size=None, statistics="image")


def pipeline_of(ckpt) -> Pipeline:
    """The pipeline of a checkpoint: its ``meta["pipeline"]``, validated, else :func:`legacy_pipeline`.

    Raises
    ------
    InputDataError
        The stored pipeline is not one :meth:`Pipeline.from_json` accepts, or is for another
        number of spatial dimensions than the model; the message names the checkpoint file.
    """
    meta, where = getattr(ckpt, "meta", None) or {}, getattr(ckpt, "path", None)
    raw = meta.get("pipeline")
    if raw is None:
        return legacy_pipeline(ckpt.config)
    try:
        pipeline = Pipeline.from_json(raw)
    except InputDataError as exc:
        raise InputDataError(where, f"checkpoint's preprocessing refused: {exc.problem}") from exc
    if pipeline.spatial_dims != ckpt.config.spatial_dims:
        raise InputDataError(where, f"checkpoint's preprocessing is for {pipeline.spatial_dims}D images but its "
                             f"model is {ckpt.config.spatial_dims}D")
    return pipeline


def _is_volume(cohort: Cohort) -> bool:
    return kind_of(cohort).spatial_dims == 3


def _header(ref: str):
    path = Path(ref.split(KEY_SEP, 1)[0])
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for non-NIfTI files
        raise InputDataError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc


def case_spacing(cohort: Cohort, case_id: str, orientation: str | None = "RAS") -> tuple[float, ...]:
    """A volume's voxel size in mm from its first channel's header (no voxel data read).

    With ``orientation``, per axis *after* reorientation (a stored LPI or PSR scan's axes are
    permuted first), so spacings of scans stored in different orientations can be compared.
    """
    img = _header(split_channels(cohort.row(case_id)["image"])[0])
    affine = np.asarray(img.affine, dtype=float)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if orientation is None:
        return tuple(float(s) for s in spacing)
    to = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                         nib.orientations.axcodes2ornt(orientation))
    out = np.empty(3)
    out[to[:, 0].astype(int)] = spacing
    return tuple(float(s) for s in out)


def pipeline_for(cohort: Cohort, case_ids: Sequence[str] | None = None, *, model_config=None,
                 **overrides) -> Pipeline:
    """The default pipeline for training on ``cohort``'s cases ``case_ids`` (default: all).

    3D volumes: orientation RAS, the cases' median spacing (per RAS axis, read from the headers),
    foreground crop — the breast box for MAMA-MIA —, tissue statistics. 2D images: no resampling
    or crop, native size, foreground statistics.
    ``model_config`` (a :class:`~napari_fairseg.models.networks.ModelConfig`) gives the spatial
    dimensions and the normalisation (its ``intensity``); ``overrides`` replace any field
    (``spacing=(1.0, 1.0, 1.0)`` for seed 004's 1 mm grid).
    """
    names = {f.name for f in fields(Pipeline)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown pipeline field(s) {unknown}; known: {sorted(names)}")
    ids = list(cohort.case_ids if case_ids is None else case_ids)
    if model_config is not None:
        dims = model_config.spatial_dims
    elif _is_volume(cohort) and ids:
        shape = _header(split_channels(cohort.row(ids[0])["image"])[0]).shape
        dims = 2 if len(shape) == 2 else 3
    else:
        dims = 3 if _is_volume(cohort) else 2
    base: dict = {"spatial_dims": dims}
    if model_config is not None:
        base["normalise"] = model_config.intensity
    if dims == 3:
        base.update(orientation="RAS", crop=kind_of(cohort).crop, statistics="tissue")
        if "spacing" not in overrides and ids and _is_volume(cohort):
            orientation = overrides.get("orientation", "RAS")
            spacings = np.array([case_spacing(cohort, cid, orientation) for cid in ids])
            base["spacing"] = tuple(float(s) for s in np.median(spacings, axis=0))
    else:
        base.update(orientation=None, spacing=None, crop="none", size=None)
    return Pipeline(**{**base, **overrides})


# --------------------------------------------------------------------------- items and boxes
def _case_files(cohort: Cohort, case_id: str, with_label: bool) -> list[Path]:
    row = cohort.row(case_id)
    refs = split_channels(row["image"])
    if with_label and isinstance(row["label"], str) and row["label"]:
        refs.append(row["label"])
    files = [Path(r.split(KEY_SEP, 1)[0]) for r in refs]
    if kind_of(cohort).crop == "box":
        files.append(box_path(cohort, case_id))
    return files


def _stamp(paths: Sequence[Path]) -> str:
    parts = []
    for p in paths:
        try:
            st = p.stat()
            parts.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}|missing")
    return ";".join(parts)


def case_items(cohort: Cohort, case_ids: Sequence[str], *, with_label: bool = True) -> list[dict]:
    """Light dataset items, no arrays: ``{"case_id", "with_label", "stamp"}`` per case.

    ``with_label`` is false for a case without a label file. ``stamp`` names each file the
    case is read from (channels, label, MAMA-MIA patient-info JSON) with its size and
    modification time, so a persistent cache entry keyed by the item goes stale when a file
    changes, and two cohorts' cases with the same id never share one.
    """
    items = []
    for cid in case_ids:
        label = cohort.row(cid)["label"]
        has = bool(with_label and isinstance(label, str) and label)
        items.append({"case_id": cid, "with_label": has, "stamp": _stamp(_case_files(cohort, cid, has))})
    return items


def box_path(cohort: Cohort, case_id: str) -> Path:
    """The patient-info JSON of a MAMA-MIA case: ``patient_info_files/<pid>.json`` (else its
    lower-case name) in the dataset folder — the one above ``images/<pid>/``, else the
    cohort's source folder (the first that holds it)."""
    first = Path(split_channels(cohort.row(case_id)["image"])[0].split(KEY_SEP, 1)[0])
    roots = [first.parent.parent.parent]
    if cohort.source is not None:
        src = Path(cohort.source)
        roots.append(src.parent if src.is_file() else src)
    candidates = [r / PATIENT_INFO / name for r in roots for name in (f"{case_id}.json", f"{case_id.lower()}.json")]
    return next((c for c in candidates if c.is_file()), candidates[0])


def breast_box(cohort: Cohort, case_id: str, shape: Sequence[int]) -> tuple[list[int], list[int]]:
    """The MAMA-MIA breast box of a case as ``(start, end)`` voxel indices of the stored image.

    In our (nibabel) axis order, end exclusive (read by
    :func:`~napari_fairseg.data.readers.read_breast_box`; see the module notes for the JSON's
    ``(z, y, x)`` order).

    Raises
    ------
    InputDataError
        No patient-info file, no ``primary_lesion.breast_coordinates``, values that are not
        whole numbers, or a box that is empty or reaches outside the image.
    """
    path = box_path(cohort, case_id)
    if not path.is_file():
        raise InputDataError(path, f"no patient-info file with the breast box of case {case_id!r}; "
                             "train with crop='foreground' if the dataset has none")
    box = read_breast_box(path, shape=tuple(shape))
    return [sl.start for sl in box], [sl.stop for sl in box]


def foreground_box(image: np.ndarray) -> tuple[list[int], list[int]] | None:
    """Bounding box ``(start, end)`` of the voxels != 0 in any channel of ``(C, *S)``; ``None`` if none."""
    mask = np.any(np.asarray(image) != 0, axis=0)
    if not mask.any():
        return None
    start, end = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        start.append(int(hit[0]))
        end.append(int(hit[-1]) + 1)
    return start, end


# --------------------------------------------------------------------------- transforms
def _tensor(array) -> torch.Tensor:
    if isinstance(array, MetaTensor):
        array = array.as_tensor()
    if isinstance(array, torch.Tensor):
        return array.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(array))


def _meta_tensor(array, affine, *, meta: dict | None = None, ops: list | None = None) -> MetaTensor:
    out = MetaTensor(_tensor(array), affine=torch.as_tensor(np.asarray(affine), dtype=torch.float64), meta=meta)
    if ops is not None:
        out.applied_operations = ops
    return out


def _replaced(mt: MetaTensor, array) -> MetaTensor:
    """``array`` with the affine, metadata and applied operations of ``mt``."""
    out = MetaTensor(_tensor(array), meta=deepcopy(mt.meta))
    out.applied_operations = deepcopy(mt.applied_operations)
    return out


def case_dict(case: CaseData) -> dict:
    """A loaded case as the transforms' dict: ``image`` MetaTensor ``(C, *S)`` float32 with the
    case's affine, ``label`` ``(1, *S)`` int16 (if the case has one), ``case_id``."""
    meta = {"original_affine": np.asarray(case.affine, dtype=float), "spatial_shape": np.asarray(case.spatial_shape)}
    d = {"case_id": case.case_id,
         "image": _meta_tensor(np.asarray(case.image, dtype=np.float32), case.affine, meta=dict(meta))}
    if case.label is not None:
        d["label"] = _meta_tensor(np.asarray(case.label, dtype=np.int16)[None], case.affine, meta=dict(meta))
    return d


class LoadCased(MapTransform):
    """Item ``{"case_id", "with_label", ...}`` → :func:`case_dict` of the case read from disk.

    ``channels`` (inference): fit an RGB photo to a 1-channel model first
    (:func:`~.intensity.match_channels`) and keep the note for the user under ``"note"``.
    """

    def __init__(self, cohort: Cohort, *, with_label: bool = True, channels: int | None = None):
        super().__init__(("image", "label"), allow_missing_keys=True)
        self.cohort, self.with_label, self.channels = cohort, with_label, channels

    def __call__(self, item: Mapping) -> dict:
        cid = item["case_id"]
        labelled = self.with_label and item.get("with_label", True)
        case = load_case(self.cohort, cid) if labelled else load_image(self.cohort, cid)
        note = None
        if self.channels is not None:
            case.image, note = match_channels(case.image, self.channels)
        d = case_dict(case)
        if self.channels is not None:
            d["note"] = note or ""
        return d


class CropRegiond(MapTransform):
    """Crop image and label to the case's region with MONAI's ``SpatialCrop``, on the stored grid.

    ``mode``: ``foreground`` (:func:`foreground_box` of the image; none found: no crop) or
    ``box`` (:func:`breast_box`).
    """

    def __init__(self, cohort: Cohort, mode: str):
        super().__init__(("image", "label"), allow_missing_keys=True)
        self.cohort, self.mode = cohort, mode

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d["image"]
        if self.mode == "box":
            start, end = breast_box(self.cohort, d["case_id"], image.shape[1:])
        else:
            found = foreground_box(image.as_tensor().numpy())
            if found is None:
                return d
            start, end = found
        crop = SpatialCrop(roi_start=start, roi_end=end)
        for key in self.key_iterator(d):
            d[key] = crop(d[key])
        return d


#: the most a pipeline may multiply a scan's voxel count by resampling (4× finer on every axis)
MAX_UPSAMPLING = 64


class ResampleGuardd(MapTransform):
    """Refuse, before it runs, a resampling of a scan that is not a volume, that multiplies its
    voxels by more than :data:`MAX_UPSAMPLING`, or whose output exceeds :func:`~.arrays.max_voxels`."""

    def __init__(self, spacing: Sequence[float]):
        super().__init__(("image",))
        self.spacing = np.asarray(spacing, dtype=float)

    def __call__(self, data: Mapping) -> Mapping:
        img, where = data["image"], data.get("case_id")
        if img.ndim - 1 != len(self.spacing):
            raise InputDataError(where, f"is a {img.ndim - 1}D image (shape {tuple(img.shape[1:])}) but the "
                                 f"model's preprocessing resamples {len(self.spacing)}D volumes")
        affine = np.asarray(img.affine, dtype=float)
        native = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        out = np.ceil(np.asarray(img.shape[1:]) * native / self.spacing).astype(int)
        factor = float(np.prod(native / self.spacing))
        if factor > MAX_UPSAMPLING:
            raise InputDataError(where, f"the model's preprocessing would resample this "
                                 f"{_fmt_mm(native)} mm scan to {_fmt_mm(self.spacing)} mm, {factor:.0f}× its voxels "
                                 f"(at most {MAX_UPSAMPLING}×): a checkpoint asking for that is not to be trusted, "
                                 "or the scan is far coarser than its training data")
        check_voxels((img.shape[0], *out.tolist()), where)
        return data


def _fmt_mm(values) -> str:
    return "×".join(f"{v:.3g}" for v in values)


class Finalised(MapTransform):
    """Image float32, label an int16 class map (resampling computes in floating point)."""

    def __init__(self):
        super().__init__(("image", "label"), allow_missing_keys=True)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d["image"] = _replaced(d["image"], d["image"].as_tensor().to(torch.float32))
        if "label" in d:
            d["label"] = _replaced(d["label"], torch.round(d["label"].as_tensor().float()).to(torch.int16))
        return d


class Intensityd(MapTransform):
    """Per-channel percentile clip and normalisation of the image (:func:`~.intensity.normalise_channels`)."""

    def __init__(self, pipeline: Pipeline):
        super().__init__(("image",))
        self.pipeline = pipeline

    def __call__(self, data: Mapping) -> dict:
        d, p = dict(data), self.pipeline
        d["image"] = _replaced(d["image"], normalise_channels(
            d["image"].as_tensor().numpy(), clip=p.clip, normalise=p.normalise, statistics=p.statistics,
            source=d.get("case_id")))
        return d


def _after_load(cohort: Cohort, pipeline: Pipeline) -> list:
    """The transforms after loading: crop, orientation, spacing / size, cast, intensity."""
    keys = ("image", "label")
    out: list = []
    if pipeline.crop != "none":
        out.append(CropRegiond(cohort, pipeline.crop))
    if pipeline.orientation is not None:
        out.append(Orientationd(keys, axcodes=pipeline.orientation, labels=None, allow_missing_keys=True))
    if pipeline.spacing is not None:
        out += [ResampleGuardd(pipeline.spacing),
                # float32 sampling: half the memory of MONAI's float64 default on 3 × 448² × 120 volumes
                Spacingd(keys, pixdim=pipeline.spacing, mode=("bilinear", "nearest"), dtype=np.float32,
                         allow_missing_keys=True)]
    if pipeline.size is not None:
        out.append(Resized(keys, spatial_size=pipeline.size, mode=("bilinear", "nearest"), allow_missing_keys=True))
    return [*out, Finalised(), Intensityd(pipeline)]


def deterministic_transforms(cohort: Cohort, pipeline: Pipeline, *, with_label: bool = True,
                             channels: int | None = None) -> Compose:
    """The deterministic preparation of a case item, as one MONAI ``Compose``.

    Parameters
    ----------
    cohort : Cohort
    pipeline : Pipeline
    with_label : bool
        Load labels (of items whose ``with_label`` is true).
    channels : int, optional
        Inference only: fit an RGB photo to a 1-channel model (its luminance) before
        normalising; the note for the user goes under ``"note"`` (``""`` when nothing changed).

    Returns
    -------
    monai.transforms.Compose
        :func:`case_items` item → ``{"image": MetaTensor (C, *S') float32, "label": MetaTensor
        (1, *S') int16 class map (if loaded), "case_id": str}``. Every step after loading is
        recorded in the MetaTensors' ``applied_operations`` and undone by :func:`invert`.
    """
    return Compose([LoadCased(cohort, with_label=with_label, channels=channels), *_after_load(cohort, pipeline)])


@contextlib.contextmanager
def input_errors():
    """Re-raise the error a user can act on (a missing file, NaN voxels, a refused breast box: a
    :class:`~napari_fairseg.errors.FairSegError`) that MONAI's ``Compose`` and data loaders wrap
    in ``RuntimeError("applying transform …")``; other errors pass unchanged.

    Examples
    --------
    >>> with input_errors():  # doctest: +SKIP
    ...     for batch in loader:
    ...         ...
    """
    try:
        yield
    except RuntimeError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, FairSegError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def _run(transforms: Sequence, data: dict) -> dict:
    """The transforms one after the other (no wrapping of the errors, unlike ``Compose``)."""
    for t in transforms:
        data = t(data)
    return data


def prepare(cohort: Cohort, pipeline: Pipeline, case_id: str, *, with_label: bool = False,
            channels: int | None = None) -> dict:
    """One case through :func:`deterministic_transforms` (its errors raised as they are)."""
    item = {"case_id": case_id, "with_label": with_label}
    return _run(deterministic_transforms(cohort, pipeline, with_label=with_label, channels=channels).transforms, item)


def prepare_case(cohort: Cohort, pipeline: Pipeline, case: CaseData) -> dict:
    """An already loaded case (its image, and label if set) through the steps after loading.

    :func:`prepare` without reading the files again: prediction keeps the raw image for its
    domain checks.
    """
    return _run(_after_load(cohort, pipeline), case_dict(case))


def _inverters() -> dict:
    """A MONAI instance per recorded class name whose ``inverse`` undoes that step from its record alone."""
    return {"Orientation": Orientation(axcodes="RAS", labels=None), "SpatialResample": SpatialResample(),
            "SpatialCrop": Crop(), "Resize": Resize(spatial_size=1)}


def invert_tensor(prepared: dict, array, *, nearest: bool) -> MetaTensor:
    """:func:`invert`, as a MetaTensor whose ``affine`` is the original image's."""
    ref = prepared["image"]
    t = _tensor(array)
    t = t if t.is_floating_point() else t.float()
    if tuple(t.shape[1:]) != tuple(ref.shape[1:]):
        raise ValueError(f"array of shape {tuple(t.shape)} is not on the prepared grid {tuple(ref.shape[1:])}")
    # the records name the instances that made them; reset, any instance of the class undoes them
    ops = reset_ops_id(deepcopy(list(ref.applied_operations)))
    if nearest:
        ops = convert_applied_interp_mode(ops, mode="nearest", align_corners=None)
    x = _meta_tensor(t, ref.affine, meta={k: v for k, v in ref.meta.items() if k != "affine"}, ops=ops)
    inverters = _inverters()
    while x.applied_operations:
        name = x.applied_operations[-1][TraceKeys.CLASS_NAME]
        if name not in inverters:
            raise RuntimeError(f"cannot undo the {name} step of a prepared case")
        x = inverters[name].inverse(x)
    return x


def invert(prepared: dict, array, *, nearest: bool) -> np.ndarray:
    """Bring a map on the prepared grid back to the case's original grid.

    Parameters
    ----------
    prepared : dict
        What :func:`prepare` (or :func:`prepare_case`) returned for the case.
    array : numpy.ndarray or torch.Tensor
        ``(C, *S')`` on the prepared grid: a label with a leading axis of 1, probabilities,
        entropy…
    nearest : bool
        Nearest-neighbour resampling (labels, masks); else the image's own interpolation
        (bilinear), for probabilities and uncertainty maps. What the crop removed comes back as 0.

    Returns
    -------
    numpy.ndarray
        ``(C, *S)`` float32 on the original grid, whose affine is the original one
        (:func:`invert_tensor`); the array itself, as numpy, when the pipeline changed no
        geometry. Round labels before casting them back to integers.
    """
    if not prepared["image"].applied_operations:
        return _tensor(array).numpy()
    return invert_tensor(prepared, array, nearest=nearest).as_tensor().float().numpy()
