"""Is this input like the model's training data? Training geometry records and input warnings.

A network trained on one kind of scan fails quietly on another: the bundled brain model, trained
on 64×64×48 volumes at 1.5 mm, paints a few hundred scattered voxels on a 1 mm MNI152 template.
The trainer therefore records the *training geometry* in every checkpoint
(:func:`training_geometry`, stored as ``meta["training_geometry"]``) and prediction compares each
input with it (:func:`input_warnings`), returning sentences a user can act on.

Everything here is numpy; no torch.

Thresholds
----------
An input gets a warning when

* **spacing** — its voxel size on some axis lies outside the training range (smallest to largest
  training spacing on that axis) by more than :data:`SPACING_TOLERANCE` (×1.2 either way);
  2D images with no physical spacing (pixels) are not compared, nor are inputs that the model's
  preprocessing pipeline resamples to its training spacing (``resampled=True``);
* **size** — its size in voxels on some axis lies outside the training range by more than
  :data:`SIZE_TOLERANCE` (×1.5 either way): a whole-image network sees a field of view it never
  saw, and even a sliding-window one sees other anatomy;
* **channels** — its channel count differs from the training one;
* **intensity** — its raw 1st–99th percentile range (per channel) leaves the training range
  (lowest 1st to highest 99th percentile over the training cases) by more than
  :data:`INTENSITY_TOLERANCE` (25%) of the typical training width, or is narrower or wider than
  the typical training width by more than ×3. Networks normalise intensities per case, so this
  flags a different modality, scanner or scaling rather than a plain offset within range.

A checkpoint without a record (trained before records existed) gets one warning that its
training geometry is unknown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.arrays import load_image
from ..data.kinds import kind_of
from ..data.manifest import Cohort
from ..errors import InputDataError

#: Version of the ``training_geometry`` record.
RECORD_VERSION = 1
#: Allowed factor outside the training spacing range.
SPACING_TOLERANCE = 1.2
#: Allowed factor outside the training size range.
SIZE_TOLERANCE = 1.5
#: Allowed excursion beyond the training intensity range, as a share of the typical width.
INTENSITY_TOLERANCE = 0.25
#: Allowed factor between an input's intensity width and the typical training width.
INTENSITY_WIDTH_FACTOR = 3.0
#: Voxels per channel used for an input's intensity percentiles (a regular subsample beyond).
INTENSITY_SAMPLE = 1 << 21

UNKNOWN_GEOMETRY = ("the checkpoint records no training geometry (spacing, size, channels, intensities): it was "
                    "trained before napari-fairseg recorded them, so inputs unlike its training data cannot be "
                    "flagged; check that your scans resemble what it was trained on")
KINDS = ("unknown", "dimensions", "channels", "spacing", "size", "intensity")


@dataclass(frozen=True)
class DomainWarning:
    """One way an input differs from the training data.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    message : str
        A sentence for the user.
    """

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- the record
def intensity_stats(image: np.ndarray, *, sample: int | None = None) -> dict[str, list[float]]:
    """Per-channel ``p1``, ``p99``, ``mean``, ``std`` of raw intensities ``(C, *S)``.

    ``sample`` caps the voxels per channel (a regular stride through the flattened channel).
    """
    out: dict[str, list[float]] = {"p1": [], "p99": [], "mean": [], "std": []}
    for ch in np.asarray(image):
        flat = ch.reshape(-1)
        if sample is not None and flat.size > sample:
            flat = flat[:: -(-flat.size // sample)]
        flat = flat.astype(np.float64)
        lo, hi = np.percentile(flat, (1, 99))
        out["p1"].append(float(lo))
        out["p99"].append(float(hi))
        out["mean"].append(float(flat.mean()))
        out["std"].append(float(flat.std()))
    return out


def case_summary(image: np.ndarray, spacing: Sequence[float]) -> dict:
    """What :func:`training_geometry` needs of one case: size, spacing, voxel count, intensity stats.

    ``image`` is the raw ``(C, *S)`` array (before normalisation), ``spacing`` its voxel size.
    """
    image = np.asarray(image)
    return {"channels": image.shape[0], "size": list(image.shape[1:]), "spacing": [float(s) for s in spacing],
            "voxels": int(np.prod(image.shape[1:])), **intensity_stats(image, sample=INTENSITY_SAMPLE)}


def training_geometry(summaries: Sequence[dict], *, spacing_unit: str = "mm") -> dict:
    """The training-geometry record of the training cases' :func:`case_summary` dicts.

    Returns a JSON-ready dict: ``version``, ``n_cases``, ``spatial_dims``, ``channels``,
    ``spacing_unit`` (``mm``, or ``pixel`` for 2D images without physical spacing), ``spacing``
    and ``size`` (per axis ``median``, ``min``, ``max``; mm and voxels), and ``intensity``
    (per channel: ``p1`` and ``p99`` — medians over the cases of each case's 1st / 99th
    percentile — ``p1_min`` and ``p99_max`` over the cases, and the pooled ``mean`` / ``std``).
    """
    if not summaries:
        raise ValueError("training_geometry needs at least one case")
    channels = {s["channels"] for s in summaries}
    dims = {len(s["size"]) for s in summaries}
    if len(channels) != 1 or len(dims) != 1:
        raise ValueError(f"training cases disagree on channels {sorted(channels)} or dimensions {sorted(dims)}")
    spacing = np.array([s["spacing"] for s in summaries], dtype=float)
    size = np.array([s["size"] for s in summaries], dtype=float)
    p1, p99, mean, std = (np.array([s[k] for s in summaries]) for k in ("p1", "p99", "mean", "std"))  # (N, C)
    w = np.array([s["voxels"] for s in summaries], dtype=float)[:, None]
    w /= w.sum()
    pooled_mean = (w * mean).sum(axis=0)
    pooled_std = np.sqrt((w * (std ** 2 + (mean - pooled_mean) ** 2)).sum(axis=0))

    def summary(a):
        return {"median": np.median(a, axis=0).tolist(), "min": a.min(axis=0).tolist(), "max": a.max(axis=0).tolist()}

    return {"version": RECORD_VERSION, "n_cases": len(summaries), "spatial_dims": dims.pop(),
            "channels": channels.pop(), "spacing_unit": spacing_unit, "spacing": summary(spacing),
            "size": summary(size),
            "intensity": {"p1": np.median(p1, axis=0).tolist(), "p99": np.median(p99, axis=0).tolist(),
                          "p1_min": p1.min(axis=0).tolist(), "p99_max": p99.max(axis=0).tolist(),
                          "mean": pooled_mean.tolist(), "std": pooled_std.tolist()}}


def spacing_unit(cohort: Cohort) -> str:
    """``mm`` for cohorts with physical spacing (their kind's ``physical``: NIfTI), ``pixel`` otherwise."""
    return "mm" if kind_of(cohort).physical else "pixel"


def cohort_geometry(cohort: Cohort, case_ids: Sequence[str]) -> dict:
    """:func:`training_geometry` of ``cohort``'s cases ``case_ids``, read from disk one by one."""
    summaries = []
    for cid in case_ids:
        case = load_image(cohort, cid)
        summaries.append(case_summary(case.image, case.spacing))
    return training_geometry(summaries, spacing_unit=spacing_unit(cohort))


def geometry_of(source) -> dict | None:
    """The training-geometry record of a checkpoint, its ``meta`` dict, or a record itself.

    Raises
    ------
    InputDataError
        A record that is not one :func:`training_geometry` writes (wrong types, lengths,
        non-finite or out-of-range numbers): a damaged or hostile checkpoint, named.
    """
    meta = getattr(source, "meta", source)
    if not isinstance(meta, Mapping):
        raise TypeError(f"expected a Checkpoint, its meta dict or a geometry record, got {type(source).__name__}")
    if "spacing" in meta and "size" in meta:
        record = meta
    else:
        record = meta.get("training_geometry")
        if record is None:
            return None
    try:
        _check_record(record)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise InputDataError(getattr(source, "path", None), f"checkpoint's training geometry is invalid: "
                             f"{str(exc)[:200]}") from exc
    return dict(record)


def _numbers(values, n: int, what: str, lo: float, hi: float) -> None:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{what} must be a list of {n} numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
            raise ValueError(f"{what} must hold numbers in [{lo:g}, {hi:g}], got {str(v)[:40]}")


def _check_record(record) -> None:
    if not isinstance(record, Mapping):
        raise TypeError("not a JSON object")
    dims, channels = record["spatial_dims"], record["channels"]
    if isinstance(dims, bool) or dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {str(dims)[:40]}")
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 64:
        raise ValueError(f"channels must be 1 … 64, got {str(channels)[:40]}")
    for name, lo, hi in (("spacing", 1e-3, 1e3), ("size", 1, 1e5)):
        for stat in ("median", "min", "max"):
            _numbers(record[name][stat], dims, f"{name} {stat}", lo, hi)
    for stat in ("p1", "p99", "p1_min", "p99_max"):
        _numbers(record["intensity"][stat], channels, f"intensity {stat}", -1e38, 1e38)


# --------------------------------------------------------------------------- the checks
def _fmt(values, digits: int = 2, *, collapse: bool = False) -> str:
    """``1.5×1.5×2``; with ``collapse``, equal values once (``×0.67``)."""
    values = list(values)
    if collapse and len(set(values)) == 1:
        values = values[:1]
    return "×".join(f"{v:.{digits}g}" if digits else f"{int(round(v))}" for v in values)


def _outside(value: float, lo: float, hi: float, factor: float) -> bool:
    return value < lo / factor or value > hi * factor


def check_input(source, image: np.ndarray, spacing: Sequence[float] | None = None, *,
                resampled: bool = False, normalised: bool = False) -> list[DomainWarning]:
    """How ``image`` differs from the training data recorded in ``source``.

    Parameters
    ----------
    source : Checkpoint or dict
        A checkpoint, its ``meta`` dict, or a training-geometry record.
    image : numpy.ndarray
        Raw (not normalised) intensities ``(C, *S)``; an array with the model's number of
        spatial dimensions and no channel axis is taken as one channel.
    spacing : sequence of float, optional
        Voxel size per spatial axis in mm; ``None`` skips the spacing check.
    resampled : bool
        The model's pipeline brings the input to its training spacing
        (:attr:`~napari_fairseg.data.pipeline.Pipeline.spacing` set): a different spacing is
        no longer a warning, and the size check compares fields of view in mm (the training
        images' sizes times their median spacing), not voxel counts. The other checks stay.
    normalised : bool
        The model's pipeline normalises each case's intensities (z-score or min-max): a scale
        or offset unlike the training images' — a scan in scanner units, say — changes nothing
        the model sees, so intensities are not compared.

    Returns
    -------
    list of DomainWarning
        Empty when the input resembles the training data (see the module's thresholds).
    """
    record = geometry_of(source)
    if record is None:
        return [DomainWarning("unknown", UNKNOWN_GEOMETRY)]
    image = np.asarray(image)
    dims = int(record["spatial_dims"])
    if image.ndim == dims:
        image = image[None]
    if image.ndim - 1 != dims:
        return [DomainWarning("dimensions", f"the image has {image.ndim - 1} spatial dimensions (shape "
                                            f"{image.shape}) but the model was trained on {dims}D images")]
    out = []
    n_ch, train_ch = image.shape[0], int(record["channels"])
    if n_ch != train_ch:
        out.append(DomainWarning("channels", f"the image has {n_ch} channel(s) but the model was trained on "
                                             f"{train_ch}: it cannot read this image as it was trained to"))
    sp = record["spacing"]
    if spacing is not None and not resampled and record.get("spacing_unit", "mm") == "mm":
        spacing = [float(s) for s in spacing]
        if len(spacing) == dims and any(_outside(s, lo, hi, SPACING_TOLERANCE)
                                        for s, lo, hi in zip(spacing, sp["min"], sp["max"], strict=True)):
            ratio = [s / m for s, m in zip(spacing, sp["median"], strict=True)]
            out.append(DomainWarning("spacing", f"spacing {_fmt(spacing)} mm differs from the model's training "
                                                f"spacing {_fmt(sp['median'])} mm (×{_fmt(ratio, collapse=True)}): structures "
                                                "appear at another size in voxels, so results may be unreliable; "
                                                "resample the scan to the training spacing"))
    sz, shape = record["size"], image.shape[1:]
    unit = "pixels" if dims == 2 else "voxels"
    lo_hi = [sz["min"], sz["max"]]
    in_mm = resampled and spacing is not None and len(spacing) == dims and record.get("spacing_unit", "mm") == "mm"
    if in_mm:  # the pipeline resamples: what matters is the field of view, in mm
        unit, shape = "mm", [n * float(s) for n, s in zip(shape, spacing, strict=True)]
        lo_hi = [[n * m for n, m in zip(b, sp["median"], strict=True)] for b in lo_hi]
    if any(_outside(s, lo, hi, SIZE_TOLERANCE) for s, lo, hi in zip(shape, *lo_hi, strict=True)):
        rng = _fmt(lo_hi[0], 0) if lo_hi[0] == lo_hi[1] else f"{_fmt(lo_hi[0], 0)} to {_fmt(lo_hi[1], 0)}"
        what = "field of view" if in_mm else "image size"
        out.append(DomainWarning("size", f"{what} {_fmt(shape, 0)} {unit} is far from the model's training "
                                         f"images ({rng} {unit}): it sees a field of view it was not trained on, "
                                         "so results may be unreliable; crop or resample the image"))
    if not normalised:
        out += _intensity_warnings(record["intensity"], image)
    return out


def _intensity_warnings(rec: dict, image: np.ndarray) -> list[DomainWarning]:
    now = intensity_stats(image, sample=INTENSITY_SAMPLE)
    if image.shape[0] == len(rec["p1"]):
        pairs = list(range(image.shape[0]))
        lo_in, hi_in = now["p1"], now["p99"]
    else:  # different channel counts: compare all channels pooled
        pairs = [0]
        lo_in, hi_in = [min(now["p1"])], [max(now["p99"])]
        rec = {k: [min(v)] if k in ("p1", "p1_min") else [max(v)] for k, v in rec.items()
               if k in ("p1", "p99", "p1_min", "p99_max")}
    out = []
    for c in pairs:
        width = rec["p99"][c] - rec["p1"][c]
        lo, hi = rec["p1_min"][c], rec["p99_max"][c]
        w_in = hi_in[c] - lo_in[c]
        beyond = lo_in[c] < lo - INTENSITY_TOLERANCE * width or hi_in[c] > hi + INTENSITY_TOLERANCE * width
        scaled = width > 0 and not (1 / INTENSITY_WIDTH_FACTOR <= w_in / width <= INTENSITY_WIDTH_FACTOR)
        if beyond or scaled:
            which = f" in channel {c}" if len(pairs) > 1 else ""
            out.append(DomainWarning("intensity", f"intensities{which} span {lo_in[c]:.3g} to {hi_in[c]:.3g} (1st to "
                                                  f"99th percentile) but the model's training images spanned "
                                                  f"{rec['p1'][c]:.3g} to {rec['p99'][c]:.3g}: another modality, "
                                                  "scanner or scaling, so results may be unreliable"))
    return out


def input_warnings(source, image: np.ndarray, spacing: Sequence[float] | None = None, *,
                   resampled: bool = False, normalised: bool = False) -> list[str]:
    """Sentences saying how ``image`` differs from the model's training data (see :func:`check_input`).

    Examples
    --------
    >>> input_warnings(checkpoint, mni_1mm[None], (1.0, 1.0, 1.0))  # doctest: +SKIP
    ['spacing 1×1×1 mm differs from the model's training spacing 1.5×1.5×1.5 mm (×0.67): ...',
     'image size 197×233×189 voxels is far from the model's training images (64×64×48 voxels): ...']
    """
    return [w.message for w in check_input(source, image, spacing, resampled=resampled, normalised=normalised)]


def summarise_warnings(per_case: Mapping[str, Sequence[DomainWarning]]) -> list[str]:
    """One line per kind of warning over many cases: how many cases, and the first case's sentence.

    ``per_case`` maps case ids to their warnings; lines come in the order of :data:`KINDS`.
    """
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for cid, warnings in per_case.items():
        for w in warnings:
            by_kind.setdefault(w.kind, []).append((cid, w.message))
    n = len(per_case)
    lines = []
    for kind in sorted(by_kind, key=KINDS.index):
        hits = by_kind[kind]
        texts = {m for _, m in hits}
        who = f"{len(hits)} of {n} case(s)"
        if len(texts) > 1:
            who += f", e.g. {hits[0][0]}"
        lines.append(f"{who}: {hits[0][1]}")
    return lines
