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
    IMAGE2D_SUFFIXES,
    NIFTI_SUFFIXES,
    NPZ_IMAGE_KEYS,
    NPZ_LABEL_KEYS,
    load_case,
    npz_array,
    read_image2d,
    read_nifti,
    to_class_map,
)
from .manifest import KEY_SEP, Cohort

#: file name endings that mark a mask (``eye01_mask.png``), as the dataset readers use them
LABEL_TAGS = ("_label", "_labels", "_seg", "_mask", "_gt")

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


#: label colours per role, so ground truth and a prediction overlaid on it read apart: ground
#: truth in greens and blues, model output in magentas and oranges (value 1, 2, … in order)
ROLE_COLOURS = {
    "truth": ("#2ecc40", "#0074d9", "#7fdbff", "#3d9970", "#01ff70", "#39cccc"),
    "prediction": ("#f012be", "#ff851b", "#ffdc00", "#b10dc9", "#ff4136", "#85144b"),
    "annotation": ("#ffdc00", "#ff4136", "#f012be", "#ff851b", "#b10dc9", "#85144b"),
}


def label_colours(role: str, values) -> dict:
    """napari's direct colour mapping for the label ``values`` of a layer of ``role``.

    Background (0) is transparent; value ``k`` takes the role's ``k``-th colour (cycling).
    """
    palette = ROLE_COLOURS[role]
    top = max([int(v) for v in values] + [len(palette)])
    return {None: "transparent", 0: "transparent",
            **{k: palette[(k - 1) % len(palette)] for k in range(1, top + 1)}}


def labels_layer(label: np.ndarray, affine: np.ndarray, name: str, metadata: dict, *,
                 role: str = "truth") -> LayerData:
    """A labels layer from a class map ``(*S)``, coloured by ``role`` (:data:`ROLE_COLOURS`).

    Class maps with values 0 … 255 travel as ``uint8`` (napari builds such a layer about three
    times faster than an ``int32`` one: measured on a 197×233×189 volume); others as ``int32``.
    """
    label = np.asarray(label)
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    label = label.astype(np.uint8 if lo >= 0 and hi < 256 else np.int32, copy=False)
    values = range(max(hi, 0) + 1)
    return (label, {"name": name, "scale": spacing_of(affine, label.ndim), "metadata": _tagged(metadata, affine),
                    "opacity": 0.5 if role == "truth" else 0.6, "colormap": label_colours(role, values)},
            "labels")


def outline(mask: np.ndarray) -> np.ndarray:
    """The in-plane boundary of a boolean ``mask`` ``(*S)``: its voxels with a background
    neighbour in the displayed plane (the last two axes), as napari shows a slice."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    structure = np.zeros((3,) * mask.ndim, bool)
    plane = (1,) * (mask.ndim - 2)
    structure[plane] = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def case_tag(cohort: Cohort, case_id: str, **extra) -> dict:
    """The ``metadata`` every layer of a case carries: how to reopen its cohort and find the case.

    ``fairseg.cohort`` is the cohort's path, ``fairseg.classes`` its declared classes (a folder
    of the user's own images has none on disk), ``fairseg.kind`` its kind.
    """
    return {"fairseg": {"cohort": str(cohort.source) if cohort.source else None, "case_id": case_id,
                        "kind": cohort.kind, "classes": {k: list(v) for k, v in cohort.classes.items()},
                        **extra}}


def cohort_of(tag: dict) -> Cohort:
    """Reopen the cohort a layer's ``metadata["fairseg"]`` tag names, with its declared classes."""
    from .readers import open_cohort

    if not tag.get("cohort"):
        raise InputDataError(None, "this layer belongs to no cohort: open a cohort in the Cohort dock")
    classes = {k: tuple(v) for k, v in (tag.get("classes") or {}).items()} or None
    return open_cohort(tag["cohort"], classes=classes)


def prediction_layers(result, affine: np.ndarray, case_id: str, metadata: dict, *,
                      entropy_max: float) -> list[LayerData]:
    """Layers of one case's prediction: the labels and, when computed, its uncertainty.

    Parameters
    ----------
    result : CasePrediction
        ``label`` ``(*S)`` and ``maps`` (``entropy``, ``roi``, ``mutual_information``; nats).
    entropy_max : float
        Upper end of the entropy colour scale (the maximum entropy of the head, nats).

    Returns the prediction (labels), the voxel entropy (``inferno``, additive, 0 … ``entropy_max``),
    the ROI outline (a cyan in-plane outline of the dilated prediction, seed 001 Eq. 1) and, for MC dropout
    / TTA, the mutual information (hidden at first).
    """
    meta = {"fairseg": {**metadata.get("fairseg", {}), "case_id": case_id, "overlay": True}}
    layers = [labels_layer(result.label, affine, f"{case_id} prediction", meta, role="prediction")]
    maps = result.maps
    if "entropy" in maps:
        data, kw, kind = image_layer(np.asarray(maps["entropy"])[None], affine, f"{case_id} entropy", meta)
        kw.update(colormap="inferno", blending="additive", contrast_limits=(0.0, entropy_max), opacity=0.8)
        layers.append((data, kw, kind))
    if "roi" in maps:  # an image, not labels: nothing to paint, and napari builds it several times faster
        roi = outline(np.asarray(maps["roi"], bool)).astype(np.uint8)
        kw = {"name": f"{case_id} ROI", "scale": spacing_of(affine, roi.ndim), "metadata": _tagged(meta, affine),
              "opacity": 1.0, "colormap": "cyan", "blending": "additive", "contrast_limits": (0, 1)}
        layers.append((roi, kw, "image"))
    if "mutual_information" in maps:
        data, kw, kind = image_layer(np.asarray(maps["mutual_information"])[None], affine,
                                     f"{case_id} mutual information", meta)
        kw.update(colormap="viridis", blending="additive", contrast_limits=(0.0, entropy_max), visible=False)
        layers.append((data, kw, kind))
    return layers


def side_by_side(columns: dict[str, list[LayerData]], affine: np.ndarray, shape) -> list[LayerData]:
    """Layer sets shown next to each other: each column's layers renamed ``"<title>: <name>"``
    and shifted right (last array axis) by one image width plus a 10 % gap per column.

    ``shape`` is the case's spatial shape ``(*S)`` (voxels); ``affine`` its voxel → world matrix.
    """
    ndim = len(shape)
    step = 1.1 * shape[-1] * spacing_of(affine, ndim)[-1]
    out = []
    for i, (title, layers) in enumerate(columns.items()):
        for data, kw, kind in layers:
            kw = {**kw, "name": f"{title}: {kw['name']}", "translate": (0.0,) * (ndim - 1) + (i * step,)}
            out.append((data, kw, kind))
    return out


def _tagged(metadata: dict, affine: np.ndarray) -> dict:
    """``metadata`` with the source affine recorded under ``fairseg`` (for the writer)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in metadata.items()}
    out.setdefault("fairseg", {})["affine"] = np.asarray(affine, float).tolist()
    return out


def case_layers(cohort: Cohort, case_id: str) -> list[LayerData]:
    """A case's image and (when it has one) ground truth, tagged with cohort and case."""
    case = load_case(cohort, case_id)
    meta = case_tag(cohort, case_id)
    layers = [image_layer(case.image, case.affine, case_id, meta)]
    if case.label is not None:
        layers.append(labels_layer(case.label, case.affine, f"{case_id} ground truth", meta))
    return layers


def _as_case(meta: dict, path: Path, stem: str, kind: str) -> dict:
    """Tag an image opened on its own as the one case of its file's cohort
    (:func:`~.readers.open_cohort` opens a single image file as such), so the docks can run on it."""
    return {"fairseg": {**meta["fairseg"], "cohort": str(path), "case_id": stem, "kind": kind}}


def file_layers(path: str | Path) -> list[LayerData]:
    """Layers of one NIfTI file (image, or labels when it holds few integer values), one
    Harvard-FairSeg ``.npz`` (fundus image, disc/cup mask as rim 1 / cup 2, attributes), or one
    2D image (PNG, JPEG, TIFF, BMP: grey or RGB; a mask — few small integer values, or a name
    ending in ``_mask``, ``_seg``, … — opens as labels)."""
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
        return [image_layer(arr[None], affine, stem, _as_case(meta, path, stem, "nifti"))]
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
    if name.lower().endswith(IMAGE2D_SUFFIXES):
        data = read_image2d(path)
        meta = {"fairseg": {"source": str(path)}}
        stem = path.stem
        if data.ndim == 3 and data.shape[-1] == 4:  # RGBA: the alpha channel carries no intensity
            data = data[..., :3]
        few = np.issubdtype(data.dtype, np.integer) and len(np.unique(data)) <= MAX_LABEL_VALUES
        if data.ndim == 2 and few and (stem.lower().endswith(LABEL_TAGS) or data.max() < MAX_LABEL_VALUES):
            return [labels_layer(data, np.eye(4), stem, meta)]
        img = data.astype(np.float32)
        img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
        return [image_layer(img, np.eye(4), stem, _as_case(meta, path, stem, "image2d"))]
    raise InputDataError(path, "not a NIfTI (.nii, .nii.gz), FairSeg .npz or 2D image (PNG, JPEG, TIFF) file")


def gallery(cohort: Cohort, attribute: str, group: str, *, n: int = 6) -> list[LayerData]:
    """Real cases of one group (top row) above its synthetic cases (bottom row), as one image
    montage and one labels montage of their masks — how people judge generated images.

    Takes the first ``n`` labelled real and ``n`` synthetic cases of ``attribute == group`` (2D
    cohorts whose cases share one image size; ``fairseg synthesize`` writes them so).

    Raises
    ------
    InputDataError
        A 3D cohort, a group with no real or no synthetic case, or images of different sizes.
    """
    cases = cohort.cases
    in_group = cases[attribute].astype("string") == str(group)
    made = set(cohort.synthetic_ids)
    rows = {"real": [c for c, lab in zip(cases.loc[in_group, "case_id"], cases.loc[in_group, "label"], strict=True)
                     if c not in made and isinstance(lab, str)][:n],
            "synthetic": [c for c in cases.loc[in_group, "case_id"] if c in made][:n]}
    empty = [k for k, ids in rows.items() if not ids]
    if empty:
        raise InputDataError(cohort.source, f"{attribute} = {group} has no {' and no '.join(empty)} cases to show "
                             "(add a folder written by fairseg synthesize)")
    loaded = {k: [load_case(cohort, c) for c in ids] for k, ids in rows.items()}
    first = loaded["real"][0]
    if first.image.ndim != 3:
        raise InputDataError(cohort.source, "the gallery shows 2D images; this cohort holds 3D volumes")
    h, w = first.label.shape
    gap_h, gap_w = max(1, h // 10), max(1, w // 10)
    width = max(len(v) for v in loaded.values())
    image = np.full((first.image.shape[0], 2 * h + gap_h, width * (w + gap_w) - gap_w), np.nan, np.float32)
    labels = np.zeros(image.shape[1:], np.uint8)
    for r, key in enumerate(("real", "synthetic")):
        for c, case in enumerate(loaded[key]):
            if case.label.shape != (h, w) or case.image.shape[0] != image.shape[0]:
                raise InputDataError(cohort.source, f"case {case.case_id!r} is {case.label.shape} but "
                                     f"{first.case_id!r} is {(h, w)}: the gallery needs one image size")
            y, x = r * (h + gap_h), c * (w + gap_w)
            image[:, y:y + h, x:x + w] = case.image
            labels[y:y + h, x:x + w] = case.label
    image = np.where(np.isnan(image), np.nanmin(image), image)
    title = f"{attribute} = {group} (top: real, bottom: synthetic)"
    meta = {"fairseg": {"gallery": {"real": rows["real"], "synthetic": rows["synthetic"]}}}
    affine = np.eye(4)
    return [image_layer(image, affine, f"gallery {title}", meta),
            labels_layer(labels, affine, f"gallery masks {title}", meta)]
