"""Dataset readers: turn a folder (or a manifest) into a :class:`Cohort`.

Known layouts (METHODS.md §4):

* a **manifest CSV** (``.csv``, with an optional ``.cohort.json`` sidecar);
* a **NIfTI folder**: ``images/<id>.nii.gz`` + ``labels/<id>.nii.gz``, or one flat folder
  where ``<id>_label`` / ``_seg`` / ``_mask`` files are the labels; plus a metadata table;
* a **2D image folder** (PNG / JPG / TIFF), same two layouts;
* **Harvard-FairSeg**: ``data_XXXXX.npz`` files (both key schemas), split from
  ``train.txt`` / ``test.txt`` lists or ``Training`` / ``Test`` sub-folders;
* **FairDomain**: the same with SLO and OCT arrays (``modality`` picks one);
* **MAMA-MIA**: ``images/<pid>/<pid>_000<phase>.nii.gz``, ``segmentations/expert/<pid>.nii.gz``,
  ``clinical_and_imaging_info.xlsx`` (sheet ``dataset_info``) and ``train_test_splits.csv``.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputDataError
from . import attributes as attr
from .arrays import (
    IMAGE2D_SUFFIXES,
    NIFTI_SUFFIXES,
    NPZ_IMAGE_KEYS,
    NPZ_LABEL_KEYS,
    npz_shape,
    strip_suffix,
)
from .atomic import is_output
from .kinds import kind_of
from .layers import LABEL_TAGS
from .manifest import Cohort, join_metadata, read_manifest, read_table

METADATA_NAMES = ("metadata.csv", "metadata.xlsx", "metadata.tsv", "clinical.csv", "clinical.xlsx")


#: the manifest a folder of ours holds; opening the folder opens it
MANIFEST_NAME = "manifest.csv"


def input_files(folder: Path, pattern: str = "*") -> list[Path]:
    """Files under ``folder`` matching ``pattern`` at any depth, skipping the output folders
    napari-fairseg wrote (:func:`~.atomic.mark_output`: predictions, projects, reports) and
    hidden files and folders (``._x.npz`` AppleDouble files a Mac leaves beside each file)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_output(Path(root) / d))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".") and fnmatch.fnmatch(f, pattern)]
    return out


def detect_kind(path: str | Path) -> str:
    """Which reader fits ``path``: ``manifest`` or one of the cohort kinds."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise InputDataError(path, "not a cohort: expected a manifest .csv or a dataset folder")
    if not path.is_dir():
        raise InputDataError(path, "no such file or folder")
    if (path / MANIFEST_NAME).is_file():  # a folder we wrote (fairseg sample, project export)
        return "manifest"
    if (path / "images").is_dir() and (path / "segmentations").is_dir():
        return "mamamia"
    files = input_files(path)
    names = [p.name.lower() for p in files]
    npz = [p for p in files if p.suffix.lower() == ".npz"]
    if npz:
        try:
            with np.load(npz[0], allow_pickle=False) as data:
                keys = set(data.keys())
        except Exception as exc:
            raise InputDataError(npz[0], f"not a readable .npz file ({exc})") from exc
        return "fairdomain" if keys & {"fundus_oct", "oct_disc_cup"} else "fairseg"
    if any(n.endswith(NIFTI_SUFFIXES) for n in names):
        return "nifti"
    if any(n.endswith(IMAGE2D_SUFFIXES) for n in names):
        return "image2d"
    raise InputDataError(path, "found no NIfTI, image, .npz or manifest files to read as a cohort")


def open_cohort(path: str | Path, *, metadata: str | Path | None = None, kind: str | None = None,
                classes: dict[str, tuple[int, ...]] | None = None, modality: str = "slo",
                phases: tuple[int, ...] = (0, 1, 2), strict: bool = False) -> Cohort:
    """Open any cohort the readers know.

    Parameters
    ----------
    path : str or Path
        A manifest CSV or a dataset folder (a folder holding ``manifest.csv`` opens that).
    metadata : str or Path, optional
        A metadata table (CSV / XLSX) joined by case id, ignoring case. Folders are also
        searched for ``metadata.csv`` / ``metadata.xlsx``.
    kind : str, optional
        Force a kind (a key of :data:`.kinds.KIND`, or ``manifest``) instead of detecting one;
        the kind's ``reader`` opens the folder.
    classes : dict, optional
        Class definitions (name → label values) overriding the kind's defaults.
    modality : {"slo", "oct"}
        FairDomain only: which image and mask to read.
    phases : tuple of int
        MAMA-MIA only: DCE phases stacked as channels (seed 004: pre-contrast and the first two
        post-contrast phases).
    strict : bool
        Raise instead of noting metadata rows with no image / images with no metadata.
    """
    path = Path(path)
    if path.is_file() and path.name.lower().endswith((*NIFTI_SUFFIXES, *IMAGE2D_SUFFIXES)):
        return _read_single(path, classes)
    kind = kind or detect_kind(path)
    if kind == "manifest":
        if path.is_dir():
            path = path / MANIFEST_NAME
        cohort = read_manifest(path)
        if metadata is not None or classes:
            cases, notes = ((cohort.cases, []) if metadata is None else
                            join_metadata(cohort.cases, read_table(metadata), source=metadata))
            cohort = Cohort(cases, cohort.kind, classes or cohort.classes, cohort.name, cohort.notes + notes, path)
    elif (spec := kind_of(kind)).reader == "folder":
        cohort = _read_generic(path, kind, metadata, classes)
    elif spec.reader == "npz":
        modalities = spec.modalities
        if len(modalities) == 1:  # FairSeg holds SLO images only, whatever was asked
            modality = modalities[0]
        elif modality not in modalities:
            raise ValueError(f"modality must be one of {modalities}, got {modality!r}")
        cohort = _read_fairseg(path, modality, classes, kind=kind)
    else:
        cohort = _read_mamamia(path, phases, metadata, classes, kind=kind)
    if strict:
        unmatched = [n for n in cohort.notes if "no metadata" in n or "no image" in n]
        if unmatched:
            raise InputDataError(path, "; ".join(unmatched))
    return cohort


# --------------------------------------------------------------------------- one image file
def _read_single(path: Path, classes) -> Cohort:
    """One NIfTI or 2D image file as a cohort of one unlabelled case (a scan opened on its own)."""
    kind = "nifti" if path.name.lower().endswith(NIFTI_SUFFIXES) else "image2d"
    cases = pd.DataFrame({"case_id": [strip_suffix(path.name)], "image": [str(path.resolve())], "label": [pd.NA]})
    return Cohort(cases, kind, classes or {}, strip_suffix(path.name), ["a single image file, no ground truth"], path)


# --------------------------------------------------------------------------- generic folders
def _find_metadata(folder: Path) -> Path | None:
    for name in METADATA_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_generic(folder: Path, kind: str, metadata, classes) -> Cohort:
    suffixes = kind_of(kind).storage.suffixes

    def scan(d: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes):
                cid = strip_suffix(p.name)
                if cid in out:
                    raise InputDataError(p, f"two files give case id {cid!r}: {out[cid].name} and {p.name}")
                out[cid] = p
        return out

    if (folder / "images").is_dir():
        images = scan(folder / "images")
        labels = scan(folder / "labels") or scan(folder / "masks")
    else:
        files = scan(folder)
        labels = {}
        for cid in list(files):
            for tag in LABEL_TAGS:
                if cid.lower().endswith(tag):
                    labels[cid[: -len(tag)]] = files.pop(cid)
                    break
        images = files
    if not images:
        raise InputDataError(folder, f"no {kind} images found")
    orphan = sorted(set(labels) - set(images))
    if orphan:
        raise InputDataError(folder, f"label file(s) with no image: {orphan[:10]}")
    cases = pd.DataFrame({
        "case_id": list(images),
        "image": [str(p) for p in images.values()],
        "label": [str(labels[c]) if c in labels else pd.NA for c in images],
    })
    notes = []
    meta_path = Path(metadata) if metadata is not None else _find_metadata(folder)
    if meta_path is not None:
        cases, notes = join_metadata(cases, read_table(meta_path), source=meta_path)
    return Cohort(cases, kind, classes or {}, folder.name, notes, folder)


# --------------------------------------------------------------------------- Harvard-FairSeg
def _split_lists(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in (folder, folder / "lists"):
        for split in ("train", "val", "test"):
            f = d / f"{split}.txt"
            if f.is_file():
                for line in f.read_text().splitlines():
                    if line.strip():
                        out[strip_suffix(Path(line.strip()).name)] = split
    return out


def _split_from_parent(p: Path) -> str | None:
    name = p.parent.name.lower()
    for split, words in {"train": ("train", "training"), "val": ("val", "validation"),
                         "test": ("test", "testing")}.items():
        if name in words:
            return split
    return None


def _scalar(data, key: str, source):
    """A one-element array of an open npz as a Python value, its shape checked before it is read."""
    shape = npz_shape(data, key, source)
    if int(np.prod(shape)) != 1:
        raise InputDataError(source, f"attribute {key!r} is not a scalar (shape {shape})")
    return np.asarray(data[key]).item()


def _read_fairseg(folder: Path, modality: str, classes, *, kind: str) -> Cohort:
    files = sorted(input_files(folder, "*.npz"), key=lambda p: (p.name, str(p)))
    if not files:
        raise InputDataError(folder, "no .npz files found")
    lists = _split_lists(folder)
    rows, raw_codes, schemas = [], {}, set()
    for f in files:
        cid = strip_suffix(f.name)
        try:
            with np.load(f, allow_pickle=False) as data:
                keys = set(data.keys())
                img_key = next((k for k in NPZ_IMAGE_KEYS[modality] if k in keys), None)
                lab_key = next((k for k in NPZ_LABEL_KEYS[modality] if k in keys), None)
                if img_key is None:
                    raise InputDataError(f, f"no {modality.upper()} image: expected one of "
                                         f"{NPZ_IMAGE_KEYS[modality]}, found {sorted(keys)}")
                schemas.add((img_key, lab_key))
                row = {"case_id": cid, "_file": str(f), "image": f"{f}#{img_key}",
                       "label": f"{f}#{lab_key}" if lab_key else pd.NA,
                       "split": lists.get(cid) or _split_from_parent(f)}
                for name, aliases in attr.FAIRSEG_ATTRIBUTE_KEYS.items():
                    key = next((k for k in aliases if k in keys), None)
                    if key is not None:
                        value = _scalar(data, key, f)
                        raw_codes.setdefault(name, set()).add(value)
                        row[name] = value
                if "pid" in keys:
                    row["pid"] = str(_scalar(data, "pid", f))
        except InputDataError:
            raise
        except Exception as exc:
            raise InputDataError(f, f"not a readable .npz file ({exc})") from exc
        rows.append(row)
    cases = pd.DataFrame(rows)
    notes = [f"npz keys (image, mask): {sorted(schemas, key=str)}"]
    if "race" in raw_codes:
        try:
            codes = {int(v) for v in raw_codes["race"]}
            coding = attr.detect_race_coding(codes)
        except (InputDataError, ValueError) as exc:
            raise InputDataError(folder, getattr(exc, "problem", str(exc))) from None
        notes.append(f"race coding: {'raw {2,3,7}' if coding == 'raw' else 'README {0,1,2}'}")
    else:
        coding = "readme"
    for name in attr.FAIRSEG_CODES:
        if name in cases.columns:
            cases[name] = [None if pd.isna(v) else attr.decode_fairseg_code(name, v, source=f, race_coding=coding)
                           for f, v in zip(cases["_file"], cases[name], strict=True)]
    cases = cases.drop(columns=["_file"])
    if "age" in cases.columns:
        ages = pd.to_numeric(cases["age"], errors="coerce").where(lambda a: a >= 0)
        years, unit = attr.age_in_years(ages.to_numpy())
        cases["age"] = np.round(years, 2)
        notes.append(f"age stored in {unit}" + (", converted to years" if unit == "days" else ""))
    return Cohort(cases, kind, classes or {}, folder.name, notes, folder)


# --------------------------------------------------------------------------- MAMA-MIA
def _read_mamamia(root: Path, phases, metadata, classes, *, kind: str) -> Cohort:
    img_root, seg_root = root / "images", root / "segmentations" / "expert"
    rows, problems = [], []
    for d in sorted(p for p in img_root.iterdir() if p.is_dir()):
        pid = d.name
        chans = [d / f"{pid}_{ph:04d}.nii.gz" for ph in phases]
        missing = [c.name for c in chans if not c.is_file()]
        if missing:
            problems.append(f"{pid}: missing phase file(s) {missing}")
            continue
        seg = seg_root / f"{pid}.nii.gz"
        rows.append({"case_id": pid, "image": ";".join(str(c) for c in chans),
                     "label": str(seg) if seg.is_file() else pd.NA})
    if problems:
        raise InputDataError(img_root, f"{len(problems)} case(s) lack requested phases {list(phases)}: "
                             + "; ".join(problems[:5]))
    if not rows:
        raise InputDataError(img_root, "no patient folders found")
    cases = pd.DataFrame(rows)
    splits_csv = root / "train_test_splits.csv"
    if splits_csv.is_file():
        sp = read_table(splits_csv)
        lookup = {}
        for col, split in (("train_split", "train"), ("test_split", "test")):
            if col in sp.columns:
                lookup.update({str(v).strip().lower(): split for v in sp[col].dropna()})
        cases["split"] = cases["case_id"].str.lower().map(lookup)
    notes = []
    meta_path = Path(metadata) if metadata is not None else root / "clinical_and_imaging_info.xlsx"
    if meta_path.is_file():
        table = read_table(meta_path, sheet="dataset_info" if meta_path.suffix.lower() == ".xlsx" else None)
        cases, notes = join_metadata(cases, table, source=meta_path, id_col=None)
        if "menopausal_status" not in cases.columns and "menopause" in cases.columns:
            cases = cases.rename(columns={"menopause": "menopausal_status"})
        if "menopausal_status" in cases.columns:
            cases["menopausal_status"] = attr.normalise_menopause(cases["menopausal_status"])
        if "age" in cases.columns:
            cases["age_group"] = attr.mamamia_age_group(cases["age"])
        notes.append("menopause normalised (peri→pre, *post*→post, *pre*→pre, missing→unknown); "
                     "age binned into age_group with the official bins")
    else:
        notes.append(f"no clinical table found at {meta_path}: attributes unknown")
    return Cohort(cases, kind, classes or {}, root.name, notes, root)


#: Keys of MAMA-MIA's ``primary_lesion.breast_coordinates``.
BREAST_BOX_KEYS = ("x_min", "x_max", "y_min", "y_max", "z_min", "z_max")


def breast_info_path(cohort: Cohort, case_id: str) -> Path:
    """Where a MAMA-MIA case's ``patient_info_files/<pid>.json`` lives (file names are lower-case)."""
    if cohort.source is None:
        raise InputDataError(None, f"cohort {cohort.name!r} has no source folder to find patient info files in")
    root = Path(cohort.source)
    return (root.parent if root.is_file() else root) / "patient_info_files" / f"{case_id.lower()}.json"


def read_breast_box(path: str | Path, *, shape: tuple[int, ...] | None = None) -> tuple[slice, slice, slice]:
    """The breast bounding box of a MAMA-MIA patient info file, as slices of the case's NIfTI
    array in nibabel's axis order: ``data[read_breast_box(path)]`` is the breast region.

    ``primary_lesion.breast_coordinates`` holds ``x_min`` … ``z_max`` as indices of the array
    SimpleITK reads (``GetArrayFromImage(img)[x_min:x_max, y_min:y_max, z_min:z_max]``, as the
    MAMA-MIA challenge's own scripts slice it), whose axes are nibabel's reversed; so the box
    is ``data[z_min:z_max, y_min:y_max, x_min:x_max]``, min inclusive, max exclusive.

    Parameters
    ----------
    path : str or Path
        ``patient_info_files/<pid>.json``.
    shape : tuple of int, optional
        The case's array shape; the box must lie inside it.

    Raises
    ------
    InputDataError
        The file is missing or not JSON, lacks a coordinate, holds a non-integer, an empty
        range or one outside ``shape``.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "patient info file does not exist")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputDataError(path, f"not a readable JSON file ({exc})") from exc
    coords = info.get("primary_lesion", {}).get("breast_coordinates") if isinstance(info, dict) else None
    if not isinstance(coords, dict) or not coords:
        raise InputDataError(path, "no primary_lesion.breast_coordinates in the patient info file")
    missing = [k for k in BREAST_BOX_KEYS if k not in coords]
    if missing:
        raise InputDataError(path, f"breast_coordinates lacks {missing}")
    values = {}
    for k in BREAST_BOX_KEYS:
        v = coords[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not v.is_integer()):
            raise InputDataError(path, f"breast_coordinates {k} is {v!r}, not a whole number")
        values[k] = int(v)
    box = []
    for axis, name in enumerate("zyx"):
        lo, hi = values[f"{name}_min"], values[f"{name}_max"]
        if not 0 <= lo < hi or (shape is not None and hi > shape[axis]):
            size = f" (array axis {axis} has {shape[axis]} voxels)" if shape is not None else ""
            raise InputDataError(path, f"breast_coordinates {name}_min..{name}_max = {lo}..{hi} is not a "
                                 f"range inside the image{size}")
        box.append(slice(lo, hi))
    return tuple(box)
