"""Loading and saving the arrays of a case with their geometry.

Images come back channel-first, ``(C, *spatial)`` float32; labels as ``(*spatial)`` int16
class maps whose values are those named in ``Cohort.classes`` (a kind's own label codes, e.g.
FairSeg's −1/−2, become class values: rim = 1, cup = 2). NIfTI affines and voxel spacings (mm)
are kept; 2D images get unit spacing. Which format a case is in, and how its labels are coded, is
the cohort kind's description (:mod:`.kinds`).

Every reader checks an array's shape from the file's header against a voxel limit
(:func:`max_voxels`, environment variable ``FAIRSEG_MAX_VOXELS``) before decompressing it: a
few hundred bytes of npz, PNG or NIfTI can claim gigabytes.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputDataError
from .atomic import atomic_path, path_inside
from .kinds import IMAGE, NIFTI, CohortKind, kind_of
from .manifest import KEY_SEP, Cohort, split_channels

NIFTI_SUFFIXES = NIFTI.suffixes
IMAGE2D_SUFFIXES = IMAGE.suffixes
#: Accepted npz keys, in order of preference (README and code disagree).
NPZ_IMAGE_KEYS = {"slo": ("slo_fundus", "fundus_slo"), "oct": ("fundus_oct", "oct_fundus")}
NPZ_LABEL_KEYS = {"slo": ("disc_cup_mask", "disc_cup", "slo_disc_cup"), "oct": ("oct_disc_cup",)}


@dataclass
class CaseData:
    """The arrays of one case.

    Attributes
    ----------
    case_id : str
    image : numpy.ndarray
        ``(C, *spatial)`` float32.
    label : numpy.ndarray or None
        ``(*spatial)`` int16 class map, or ``None`` for an unlabelled case.
    affine : numpy.ndarray
        ``(4, 4)`` voxel → world (mm) matrix; for 2D images ``diag(spacing, 1, 1)``.
    spacing : tuple of float
        Voxel size per spatial axis, in mm (pixels for 2D images).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, ...]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_suffix(name: str) -> str:
    """File name without its image suffix (``case.nii.gz`` → ``case``)."""
    low = name.lower()
    for suf in (*NIFTI_SUFFIXES, ".npz", *IMAGE2D_SUFFIXES):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


# --------------------------------------------------------------------------- size guard
#: Default :func:`max_voxels`: 2**28 (268 M) elements, room for a 512 × 512 × 200 × 3 DCE volume.
DEFAULT_MAX_VOXELS = 2 ** 28


def max_voxels() -> int:
    """The largest array (elements, channels included) a reader accepts from one file.

    ``FAIRSEG_MAX_VOXELS`` in the environment overrides :data:`DEFAULT_MAX_VOXELS`.
    """
    raw = os.environ.get("FAIRSEG_MAX_VOXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise InputDataError(None, f"FAIRSEG_MAX_VOXELS must be a positive whole number, got {raw!r}")
    return limit


def check_voxels(shape, source) -> None:
    """Raise :class:`InputDataError` if an array of ``shape`` exceeds :func:`max_voxels`."""
    shape = tuple(int(s) for s in shape)
    n, limit = math.prod(shape), max_voxels()
    if n > limit:
        raise InputDataError(source, f"array of shape {shape} ({n} voxels) exceeds the limit of {limit} voxels; "
                             "if the file is genuine, raise the limit with the environment variable "
                             "FAIRSEG_MAX_VOXELS")


def npz_shape(data, key: str, source=None) -> tuple[int, ...]:
    """The shape of array ``key`` of an open ``np.load`` npz, read from its header alone.

    Raises
    ------
    InputDataError
        The header declares anything but plain numbers or booleans (a ``|V1500000000`` or
        ``<U…`` "scalar" can hold gigabytes in a file of a few hundred kB).
    """
    member = f"{key}.npy" if f"{key}.npy" in data.zip.namelist() else key
    with data.zip.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # 3.0: utf-8 field names; no public reader
            shape, _, dtype = np.lib.format._read_array_header(fh, version)
    text = dtype.kind in "SU" and dtype.itemsize <= 1024  # a short id or code string
    if not (text or (dtype.kind in "biuf" and dtype.itemsize <= 8)):
        raise InputDataError(source, f"array {key!r} holds {dtype} values, not plain numbers or short text: "
                             "refused (such an entry can hold gigabytes in a small file)")
    return tuple(shape)


def npz_array(data, key: str, source) -> np.ndarray:
    """``data[key]`` of an open npz, after checking its header's shape against :func:`max_voxels`."""
    check_voxels(npz_shape(data, key, source), source)
    return np.asarray(data[key])


# --------------------------------------------------------------------------- raw readers
def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(data, affine)`` of a NIfTI file; a clear error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for truncated / non-NIfTI files
        raise InputDataError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    check_voxels(img.shape, path)
    affine = np.asarray(img.affine, dtype=float)
    check_affine(affine, path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated / non-NIfTI files
        raise InputDataError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    return data, affine


def check_affine(affine: np.ndarray, source=None) -> None:
    """Refuse a voxel-to-world affine that is not finite, or whose axes are degenerate (a zero
    voxel size, two axes along one line): orientation and resampling cannot be computed from it."""
    if not np.isfinite(affine).all():
        raise InputDataError(source, "the header's affine (voxel-to-world matrix) holds NaN or infinite values")
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not (sizes > 1e-6).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9 * float(np.prod(sizes)):
        raise InputDataError(source, "the header's affine (voxel-to-world matrix) is degenerate: a voxel size of 0 "
                             f"or axes along one line (voxel sizes {np.round(sizes, 4).tolist()}); fix the header")


def read_image2d(path: str | Path) -> np.ndarray:
    """Return a 2D image as ``(H, W)`` or ``(H, W, C)``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        with Image.open(path) as im:  # reads the header only
            bands = len(im.getbands())
            check_voxels((im.height, im.width, *((bands,) if bands > 1 else ())), path)
            return np.asarray(im)
    except Image.DecompressionBombError as exc:  # Pillow's own limit (~179 M pixels) came first
        raise InputDataError(path, f"image too large to read safely ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputDataError(path, f"not a readable image ({exc})") from exc


def read_npz_array(ref: str) -> np.ndarray:
    """Read ``file.npz#key``; with no key, or a key that is absent, try the known aliases."""
    path, _, key = ref.partition(KEY_SEP)
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if not key and len(keys) == 1:
                key = keys[0]
            if key not in keys:
                group = next((g for g in (*NPZ_IMAGE_KEYS.values(), *NPZ_LABEL_KEYS.values()) if key in g), ())
                alt = next((k for k in group if k in keys), None)
                if alt is None:
                    raise InputDataError(path, f"npz has no array {key!r} (it holds {keys})")
                key = alt
            return npz_array(data, key, path)
    except InputDataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputDataError(path, f"not a readable .npz file ({exc})") from exc


# --------------------------------------------------------------------------- validation
def _check_finite(arr: np.ndarray, source) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputDataError(source, f"image contains {n} NaN or infinite value(s)")


def to_class_map(arr: np.ndarray, *, kind: str, classes: dict[str, tuple[int, ...]], source) -> np.ndarray:
    """Validate a label / prediction array and return it as an int16 class map.

    ``kind`` (a kind's name) says how its masks may be coded: FairSeg masks may use the
    dataset's codes (0, −1 rim, −2 cup) or class indices (0, 1, 2) (``label_codes``); 2D image
    masks stored as 0/255 become 0/1 (``mask_255``). Anything else outside the declared class
    values is an error that names the values found.
    """
    spec = kind_of(kind)
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.int16)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputDataError(source, "label contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputDataError(source, "label is not integer-valued (probabilities? threshold them first)")
    values = set(np.unique(arr).astype(int).tolist())
    if values & spec.coded:
        if values <= set(spec.label_codes):
            return _decode(arr, spec.label_codes)
        raise InputDataError(source, f"mask mixes {spec.name} label codes {sorted(spec.label_codes)} and class "
                             f"indices: values {sorted(values)}")
    if spec.mask_255 and values <= {0, 255}:
        return (arr == 255).astype(np.int16)
    allowed = {0} | {v for vals in classes.values() for v in vals}
    if not values <= allowed:
        extra = sorted(values - allowed)
        what = "non-binary mask" if allowed == {0, 1} else "unexpected label values"
        raise InputDataError(source, f"{what}: values {extra} are not among the declared classes "
                             f"{dict(classes)} (values found: {sorted(values)[:12]})")
    return arr.astype(np.int16)


def _decode(arr: np.ndarray, codes) -> np.ndarray:
    """``arr`` with every label code replaced by its class value, as int16."""
    out = np.zeros(arr.shape, dtype=np.int16)
    for code, value in codes.items():
        out[arr == code] = value
    return out


def encode_label(label: np.ndarray, kind: CohortKind) -> np.ndarray:
    """A class map in the kind's own label codes (FairSeg: rim −1, cup −2) as the smallest
    integer type that holds them; a kind without codes gets its class values as uint8."""
    if not kind.label_codes:
        return label.astype(np.uint8)
    lo, hi = min(kind.label_codes), max(kind.label_codes)
    dtype = next(t for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32)
                 if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    codes = np.zeros(label.shape, dtype=dtype)
    for code, value in kind.label_codes.items():
        codes[label == value] = code
    return codes


# --------------------------------------------------------------------------- cases
def _load_nifti_channels(refs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    chans, affine, shape = [], None, None
    for ref in refs:
        data, aff = read_nifti(ref)
        if data.ndim == 4 and len(refs) == 1:
            data = np.moveaxis(data, -1, 0)  # (X, Y, Z, C) → (C, X, Y, Z)
        elif data.ndim not in (2, 3):
            raise InputDataError(ref, f"expected a 2D or 3D volume, got shape {data.shape}")
        else:
            data = data[None]
        if shape is not None and data.shape[1:] != shape:
            raise InputDataError(ref, f"channel shape {data.shape[1:]} differs from the first channel's {shape}")
        if affine is not None and not np.allclose(aff, affine, atol=1e-3):
            raise InputDataError(ref, "channel affine differs from the first channel's affine")
        shape, affine = data.shape[1:], aff
        chans.append(np.asarray(data, dtype=np.float32))
    return np.concatenate(chans, axis=0), affine


def _spacing_from_affine(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(s) for s in np.sqrt((affine[:3, :ndim] ** 2).sum(axis=0)))


def load_image(cohort: Cohort, case_id: str) -> CaseData:
    """Load a case's image (no label) with its geometry."""
    row = cohort.row(case_id)
    refs = split_channels(row["image"])
    storage = kind_of(cohort).storage.name
    if storage == "nifti":
        image, affine = _load_nifti_channels(refs)
        spacing = _spacing_from_affine(affine, image.ndim - 1)
    elif storage == "npz":
        image = np.stack([np.asarray(read_npz_array(r), dtype=np.float32) for r in refs])
        if image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] in (3, 4):
            image = np.moveaxis(image[0], -1, 0)
        spacing, affine = (1.0, 1.0), np.eye(4)
    else:
        arrs = [read_image2d(r) for r in refs]
        arrs = [np.moveaxis(a, -1, 0) if a.ndim == 3 else a[None] for a in arrs]
        image = np.concatenate(arrs).astype(np.float32)
        spacing, affine = (1.0, 1.0), np.eye(4)
    _check_finite(image, refs[0])
    return CaseData(case_id, image, None, affine, spacing)


def load_label_file(cohort: Cohort, ref: str, *, expect: CaseData | None = None) -> np.ndarray:
    """Read a label or prediction file of this cohort's format as a class map.

    With ``expect``, the shape (and for NIfTI the affine) must match that case's image.
    """
    storage = kind_of(cohort).storage.name
    if storage == "nifti" or is_nifti(ref):
        arr, aff = read_nifti(ref)
        if expect is not None and arr.shape == expect.spatial_shape and not np.allclose(aff, expect.affine, atol=1e-3):
            raise InputDataError(ref, "label affine differs from the image affine "
                                 f"(image spacing {expect.spacing}); they do not describe the same space")
    elif storage == "npz":
        arr = read_npz_array(ref)
    else:
        arr = read_image2d(ref)
        if arr.ndim == 3:
            arr = arr[..., 0]
    if expect is not None and tuple(arr.shape) != expect.spatial_shape:
        raise InputDataError(ref, f"label shape {tuple(arr.shape)} does not match image shape {expect.spatial_shape}")
    return to_class_map(arr, kind=cohort.kind, classes=cohort.classes, source=ref)


def load_case(cohort: Cohort, case_id: str) -> CaseData:
    """Load a case's image and (if it has one) label, checked against each other."""
    case = load_image(cohort, case_id)
    ref = cohort.row(case_id)["label"]
    if isinstance(ref, str) and ref:
        case.label = load_label_file(cohort, ref, expect=case)
    return case


# --------------------------------------------------------------------------- predictions
def prediction_path(cohort: Cohort, pred_dir: str | Path, case_id: str) -> Path:
    """Where a prediction of ``case_id`` lives: ``<dir>/<case_id>`` + the cohort's suffix.

    The first existing file with one of the storage's suffixes (in their order: a ``.nii``
    before a ``.nii.gz``, a ``.png`` before a ``.jpg``), else the one napari-fairseg writes.

    Raises
    ------
    InputDataError
        ``case_id`` would place the file outside ``pred_dir`` (``../x``, an absolute path).
    """
    storage = kind_of(cohort).storage
    for suf in storage.suffixes:
        if (path := path_inside(pred_dir, f"{case_id}{suf}")).is_file():
            return path
    return path_inside(pred_dir, f"{case_id}{storage.write_suffix}")


def label_key(cohort: Cohort, case_id: str) -> str:
    """The npz key holding a case's mask (from its label or image reference)."""
    row = cohort.row(case_id)
    ref = row["label"] if isinstance(row["label"], str) else ""
    if KEY_SEP in ref:
        return ref.split(KEY_SEP, 1)[1]
    image_key = str(row["image"]).split(KEY_SEP, 1)[-1]
    return NPZ_LABEL_KEYS["oct" if "oct" in image_key else "slo"][0]


def label_ref(cohort: Cohort, path: str | Path, case_id: str) -> str:
    """The reference of a label file of ``case_id``: its path, followed by ``#<mask key>`` where
    the cohort's storage keeps arrays under a key (FairSeg npz, :func:`label_key`)."""
    ref = str(path)
    return ref + KEY_SEP + label_key(cohort, case_id) if kind_of(cohort).storage.keyed else ref


def load_prediction(cohort: Cohort, pred_dir: str | Path, case: CaseData) -> np.ndarray:
    """Load the prediction of ``case`` from ``pred_dir`` (see :func:`prediction_path`)."""
    path = prediction_path(cohort, pred_dir, case.case_id)
    if not path.is_file():
        raise InputDataError(path, f"no prediction for case {case.case_id!r}")
    return load_label_file(cohort, label_ref(cohort, path, case.case_id), expect=case)


def save_label(cohort: Cohort, path: str | Path, label: np.ndarray, *, like: CaseData) -> Path:
    """Write a class map in the cohort's format, atomically.

    NIfTI gets ``like``'s affine; npz holds the case's mask under its key; 2D images are
    written as 8-bit PNG. Values are written in the kind's label codes (FairSeg: rim −1, cup −2;
    :func:`encode_label`).
    """
    label = np.asarray(label)
    if tuple(label.shape) != like.spatial_shape:
        raise InputDataError(path, f"label shape {label.shape} does not match image shape {like.spatial_shape}")
    path = Path(path)
    kind = kind_of(cohort)
    codes = encode_label(label, kind)
    with atomic_path(path) as tmp:
        if kind.storage.name == "nifti":
            nib.save(nib.Nifti1Image(codes, like.affine), str(tmp))
        elif kind.storage.name == "npz":
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{label_key(cohort, like.case_id): codes})
        else:
            from PIL import Image

            Image.fromarray(codes).save(tmp, format="PNG")
    return path
