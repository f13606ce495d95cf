"""Cases and files as napari layer data tuples ``(data, kwargs, layer_type)`` — plain Python.

No napari import here: the npe2 reader, writer and sample-data entry points (``_reader.py``,
``_writer.py``, ``_sample_data.py``) return these tuples and napari builds the layers.
Geometry is physical: each layer's ``scale`` is the voxel size in mm along each array axis
(the norms of the affine's columns), so an anisotropic volume shows with its true proportions,
and the layers of one case overlap exactly. The array stays in the file's voxel order and the
full voxel → world affine travels in ``metadata["fairseg"]["affine"]``: napari can only slice
transforms that keep array axes apart, which permuted or oblique NIfTI orientations do not,
and the writer needs the untouched affine to save an edited label in the source's space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputDataError
from .arrays import (
    NIFTI_SUFFIXES,
    NPZ_IMAGE_KEYS,
    NPZ_LABEL_KEYS,
    load_case,
    npz_array,
    read_nifti,
    to_class_map,
)
from .manifest import KEY_SEP, Cohort

LayerData = tuple[np.ndarray, dict, str]

#: label values with more distinct integers than this are read as an image, not labels
MAX_LABEL_VALUES = 64


def spacing_of(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    """Voxel size (mm) along each of the first ``ndim`` array axes of a voxel → world affine."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, float)[:3, :ndim], axis=0))


def image_layer(image: np.ndarray, affine: np.ndarray, name: str, metadata: dict) -> LayerData:
    """An image layer from ``(C, *S)``: one channel is shown plain, several as channels."""
    ndim = image.ndim - 1
    kw = {"name": name, "scale": spacing_of(affine, ndim), "metadata": _tagged(metadata, affine)}
    if image.shape[0] == 1:
        return image[0], {**kw, "colormap": "gray"}, "image"
    if image.shape[0] == 3 and ndim == 2:  # colour fundus / RGB
        return np.moveaxis(image, 0, -1), {**kw, "rgb": True}, "image"
    return image, {**kw, "channel_axis": 0}, "image"


def labels_layer(label: np.ndarray, affine: np.ndarray, name: str, metadata: dict) -> LayerData:
    """A labels layer from a class map ``(*S)``."""
    return (np.asarray(label).astype(np.int32), {"name": name, "scale": spacing_of(affine, label.ndim),
                                                 "metadata": _tagged(metadata, affine), "opacity": 0.5}, "labels")


def _tagged(metadata: dict, affine: np.ndarray) -> dict:
    """``metadata`` with the source affine recorded under ``fairseg`` (for the writer)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in metadata.items()}
    out.setdefault("fairseg", {})["affine"] = np.asarray(affine, float).tolist()
    return out


def case_layers(cohort: Cohort, case_id: str) -> list[LayerData]:
    """A case's image and (when it has one) ground truth, tagged with cohort and case."""
    case = load_case(cohort, case_id)
    meta = {"fairseg": {"cohort": str(cohort.source) if cohort.source else None, "case_id": case_id,
                        "kind": cohort.kind}}
    layers = [image_layer(case.image, case.affine, case_id, meta)]
    if case.label is not None:
        layers.append(labels_layer(case.label, case.affine, f"{case_id} ground truth", meta))
    return layers


def file_layers(path: str | Path) -> list[LayerData]:
    """Layers of one NIfTI file (image, or labels when it holds few integer values) or one
    Harvard-FairSeg ``.npz`` (fundus image, disc/cup mask as rim 1 / cup 2, attributes)."""
    path = Path(path)
    name = path.name
    if name.lower().endswith(NIFTI_SUFFIXES):
        data, affine = read_nifti(path)
        stem = name[: -len(next(s for s in NIFTI_SUFFIXES if name.lower().endswith(s)))]
        meta = {"fairseg": {"source": str(path)}}
        if data.ndim not in (2, 3):
            data = np.squeeze(data)
            if data.ndim not in (2, 3):
                raise InputDataError(path, f"expected a 2D or 3D volume, got shape {data.shape}")
        if np.issubdtype(data.dtype, np.integer) and len(np.unique(data)) <= MAX_LABEL_VALUES:
            return [labels_layer(data, affine, stem, meta)]
        arr = np.asarray(data, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputDataError(path, "image holds NaN or infinite values")
        return [image_layer(arr[None], affine, stem, meta)]
    if name.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz_array(npz, k, path) for k in npz.keys()}
        except InputDataError:
            raise
        except Exception as exc:  # noqa: BLE001 - zip, pickle and OS errors alike
            raise InputDataError(path, f"not a readable .npz file ({exc})") from exc
        img_key = next((k for keys in NPZ_IMAGE_KEYS.values() for k in keys if k in arrays), None)
        if img_key is None:
            raise InputDataError(path, f"no fundus image in this npz (expected one of "
                                 f"{[k for v in NPZ_IMAGE_KEYS.values() for k in v]}, found {sorted(arrays)})")
        attrs = {k: v.item() for k, v in arrays.items() if v.ndim == 0}
        meta = {"fairseg": {"source": str(path), "attributes": attrs}}
        img = arrays[img_key].astype(np.float32)
        img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0) if img.shape[-1] in (3, 4) else img
        layers = [image_layer(img, np.eye(4), path.stem, meta)]
        lab_key = next((k for keys in NPZ_LABEL_KEYS.values() for k in keys if k in arrays), None)
        if lab_key is not None:
            cmap = to_class_map(arrays[lab_key], kind="fairseg", classes={"cup": (2,), "rim": (1,)},
                                source=f"{path}{KEY_SEP}{lab_key}")
            layers.append(labels_layer(cmap, np.eye(4), f"{path.stem} disc-cup", meta))
        return layers
    raise InputDataError(path, "not a NIfTI (.nii, .nii.gz) or FairSeg .npz file")
