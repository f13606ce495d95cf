"""Per-case overlap metrics (Dice, IoU) from per-case confusion counts, vectorised.

One pass over the label maps gives every case's confusion matrix ``cm[b, p, g]`` (voxels with
predicted value ``p`` and true value ``g``); every class, also a union of values such as the
fundus *disc* (rim ∪ cup), is a few sums over it. No Python loop over cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Voxels handled per bincount call (bounds the temporary index array to ~128 MB).
_CHUNK_VOXELS = 1 << 24


def _as_batch(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class values, got dtype {arr.dtype}")
    return arr


def confusion_counts(y_pred: np.ndarray, y: np.ndarray, *, n_values: int | None = None) -> np.ndarray:
    """Per-case confusion matrices of two batches of label maps.

    Parameters
    ----------
    y_pred, y : numpy.ndarray
        ``(B, *spatial)`` integer label maps with values in ``[0, n_values)``.
    n_values : int, optional
        Number of label values; default ``max(y_pred.max(), y.max()) + 1``.

    Returns
    -------
    numpy.ndarray
        ``(B, n_values, n_values)`` int64, ``cm[b, p, g]`` = voxels of case ``b`` predicted ``p``
        whose truth is ``g``.
    """
    y_pred, y = _as_batch(y_pred, "y_pred"), _as_batch(y, "y")
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {y_pred.shape} and {y.shape}")
    if y.ndim < 2:
        raise ValueError(f"expected (B, *spatial) arrays, got shape {y.shape}")
    b = y.shape[0]
    if b == 0:
        return np.zeros((0, n_values or 1, n_values or 1), dtype=np.int64)
    lo = min(int(y_pred.min()), int(y.min()))
    if lo < 0:
        raise ValueError(f"label values must be >= 0, found {lo}")
    k = n_values or max(int(y_pred.max()), int(y.max())) + 1
    kk = k * k
    code_dtype = np.uint8 if kk <= 256 else np.int64
    per_case = int(np.prod(y.shape[1:]))
    step = max(1, _CHUNK_VOXELS // max(per_case, 1))
    out = np.empty((b, k, k), dtype=np.int64)
    flat_p, flat_g = y_pred.reshape(b, -1), y.reshape(b, -1)
    for start in range(0, b, step):
        stop = min(b, start + step)
        code = flat_p[start:stop].astype(code_dtype) * code_dtype(k) + flat_g[start:stop].astype(code_dtype)
        idx = code.astype(np.intp)
        idx += (np.arange(stop - start, dtype=np.intp) * kk)[:, None]
        out[start:stop] = np.bincount(idx.ravel(), minlength=(stop - start) * kk).reshape(stop - start, k, k)
    return out


def class_counts(cm: np.ndarray, values: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives and false negatives of a class from confusion counts.

    Parameters
    ----------
    cm : numpy.ndarray
        ``(B, K, K)`` from :func:`confusion_counts`.
    values : sequence of int
        Label values that make up the class (one value, or several for a union class).

    Returns
    -------
    tp, fp, fn : numpy.ndarray
        ``(B,)`` int64 voxel counts.
    """
    k = cm.shape[-1]
    sel = np.zeros(k, dtype=bool)
    sel[[v for v in values if v < k]] = True
    in_p = cm[:, sel, :]
    tp = in_p[:, :, sel].sum(axis=(1, 2))
    fp = in_p.sum(axis=(1, 2)) - tp
    fn = cm[:, :, sel].sum(axis=(1, 2)) - tp
    return tp, fp, fn


def dice_from_counts(tp, fp, fn, *, empty_score: float = 1.0) -> np.ndarray:
    """Dice = 2TP / (2TP + FP + FN); ``empty_score`` where both masks are empty.

    ``empty_score=1.0`` matches MONAI's ``ignore_empty=False``; the MAMA-MIA scorer uses 0;
    ``nan`` excludes such cases from means.
    """
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), empty_score)


def iou_from_counts(tp, fp, fn, *, empty_score: float = 1.0) -> np.ndarray:
    """IoU = TP / (TP + FP + FN); ``empty_score`` where both masks are empty."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = tp + fp + fn
    return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), empty_score)


def overlap_metrics(y_pred: np.ndarray, y: np.ndarray, classes: Mapping[str, Sequence[int]], *,
                    empty_score: float = 1.0) -> dict[str, np.ndarray]:
    """Dice and IoU of every class for a batch of cases.

    Parameters
    ----------
    y_pred, y : numpy.ndarray
        ``(B, *spatial)`` integer class maps; pass ``x[None]`` for a single case.
    classes : mapping of str to sequence of int
        Class name → label values (e.g. fundus ``{"cup": (2,), "rim": (1,), "disc": (1, 2)}``).
    empty_score : float
        Score where prediction and truth are both empty.

    Returns
    -------
    dict
        ``dice_<class>`` and ``iou_<class>`` → ``(B,)`` float64, plus ``tp_``/``fp_``/``fn_``
        counts per class.
    """
    cm = confusion_counts(y_pred, y)
    out: dict[str, np.ndarray] = {}
    for name, values in classes.items():
        tp, fp, fn = class_counts(cm, values)
        out[f"dice_{name}"] = dice_from_counts(tp, fp, fn, empty_score=empty_score)
        out[f"iou_{name}"] = iou_from_counts(tp, fp, fn, empty_score=empty_score)
        out[f"tp_{name}"], out[f"fp_{name}"], out[f"fn_{name}"] = tp, fp, fn
    return out
