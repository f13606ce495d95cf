"""Voxel-wise uncertainty from probability maps, and seed 001's masked scaled entropy.

All functions take and return torch tensors with a leading batch axis so they run on the
device where the probabilities already are. Entropies are in nats.

Conventions
-----------
``prob`` is ``(B, K, *S)``: a sigmoid head gives ``K = 1`` (foreground probability), a softmax
head ``K`` class probabilities. The binary entropy of a sigmoid output is
``−p log p − (1−p) log(1−p)``; the categorical one ``−Σ_c p_c log p_c``; both are 0 for a certain
voxel and at most ``log 2`` (binary) or ``log K``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..options import EMPTY_RULES


def _entr(p: torch.Tensor) -> torch.Tensor:
    """``−p log p`` with ``0 log 0 = 0``."""
    return torch.special.entr(p)


def probabilities(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Logits ``(B, K, *S)`` → probabilities of the same shape (sigmoid or softmax)."""
    return torch.sigmoid(logits) if head == "sigmoid" else torch.softmax(logits, dim=1)


def entropy(prob: torch.Tensor, head: str) -> torch.Tensor:
    """Voxel entropy ``(B, *S)`` of probabilities ``(B, K, *S)``, in nats."""
    prob = prob.float()
    if head == "sigmoid":
        p = prob[:, 0]
        h = _entr(p)
        h += _entr(1 - p)
        return h
    return _entr(prob).sum(dim=1)


def max_entropy(head: str, n_classes: int) -> float:
    """The largest possible voxel entropy: ``log 2`` for a sigmoid head, ``log K`` for softmax."""
    return math.log(2) if head == "sigmoid" else math.log(n_classes)


def decode(prob: torch.Tensor, head: str, label_values) -> torch.Tensor:
    """Probabilities ``(B, K, *S)`` → class map ``(B, *S)`` int16 of ``label_values``.

    Sigmoid: foreground where ``p > 0.5``; softmax: arg-max class.
    """
    if head == "sigmoid":
        fg = (prob[:, 0] > 0.5).to(torch.int16)
        return fg if int(label_values[1]) == 1 else fg * int(label_values[1])
    values = torch.as_tensor(list(label_values), dtype=torch.int16, device=prob.device)
    return values[prob.argmax(dim=1)]


def _dilate_box(m: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate bool ``m`` ``(*S)`` by a ``(2r+1)^d`` cube, one axis at a time.

    On the CPU: SciPy's 1-D maximum filters; elsewhere: a window count by cumulative sums.
    """
    if m.device.type == "cpu":
        from scipy.ndimage import maximum_filter1d

        a = m.numpy().view(np.uint8)
        for axis in range(a.ndim):
            a = maximum_filter1d(a, 2 * radius + 1, axis=axis, mode="constant")
        return torch.from_numpy(a.view(bool))
    return _dilate_box_cumsum(m, radius)


def _dilate_box_cumsum(m: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`_dilate_box` by a window count of cumulative sums, on any device (used off the CPU)."""
    x = m.to(torch.int32)
    for axis in range(x.ndim):
        pad = [0] * (2 * x.ndim)
        pad[2 * (x.ndim - 1 - axis)] = radius + 1  # F.pad lists the last axis first
        pad[2 * (x.ndim - 1 - axis) + 1] = radius
        cs = F.pad(x, pad).cumsum(dim=axis)
        n = x.shape[axis]
        x = (cs.narrow(axis, 2 * radius + 1, n) - cs.narrow(axis, 0, n)).clamp_max_(1)
    return x.bool()


def dilated_boxes(mask: torch.Tensor, radius: int) -> list[tuple[tuple[slice, ...], torch.Tensor] | None]:
    """Per case, the bounding box of ``mask`` ``(B, *S)`` grown by ``radius`` and the dilated mask in it.

    ``None`` for a case with an empty mask. The dilation is by a ``(2r+1)^d`` cube (Chebyshev
    radius ``r`` voxels); working inside the box makes its cost follow the structure's size.
    """
    mask = mask.bool()
    spatial = torch.tensor(mask.shape[1:])
    out = []
    for b in range(mask.shape[0]):
        where = torch.nonzero(mask[b])
        if where.numel() == 0:
            out.append(None)
            continue
        lo = (where.amin(dim=0) - radius).clamp_min(0).tolist()
        hi = torch.minimum(where.amax(dim=0) + radius + 1, spatial).tolist()
        box = tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))
        region = mask[b][box]
        out.append((box, _dilate_box(region, radius) if radius > 0 else region))
    return out


def paste_boxes(boxes: list, like: torch.Tensor) -> torch.Tensor:
    """The whole-image bool mask ``(B, *S)`` shaped like ``like`` from :func:`dilated_boxes`."""
    out = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    for b, item in enumerate(boxes):
        if item is not None:
            out[b][item[0]] = item[1]
    return out


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``mask`` ``(B, *S)`` by a ``(2r+1)^d`` cube (Chebyshev radius ``r`` voxels)."""
    return paste_boxes(dilated_boxes(mask, radius), mask)


def roi_mask(label: torch.Tensor, radius: int) -> torch.Tensor:
    """The ROI ``R`` of seed 001 Eq. 1: the predicted foreground (any non-zero class), dilated."""
    return dilate(label != 0, radius)


def masked_scaled_entropy(ent: torch.Tensor, roi: torch.Tensor, *, empty: str = "max",
                          max_value: float = math.log(2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 001 Eq. 1: ``Ĥ = (1/|R|) Σ_{v∈R} H(v)`` per case.

    Parameters
    ----------
    ent : torch.Tensor
        ``(B, *S)`` voxel entropy.
    roi : torch.Tensor
        ``(B, *S)`` bool ROI (see :func:`roi_mask`).
    empty : str
        What a case with an empty ROI (the model predicts no structure) scores, never a division
        by zero: ``max`` — the largest possible entropy ``max_value`` (such a case is the least
        trustworthy, so it is ranked first); ``whole`` — the mean entropy over the whole image;
        ``nan`` — NaN (the caller decides).

    Returns
    -------
    scores : torch.Tensor
        ``(B,)`` float32.
    is_empty : torch.Tensor
        ``(B,)`` bool, True where the ROI was empty and the rule applied.
    """
    dims = tuple(range(1, ent.ndim))
    roi = roi.bool()
    total = (ent.float() * roi).sum(dim=dims)
    return _apply_empty_rule(total, roi.sum(dim=dims), lambda: ent.float().mean(dim=dims), empty, max_value)


def masked_scaled_entropy_in_boxes(prob: torch.Tensor, boxes: list, head: str, *, empty: str = "max",
                                   max_value: float = math.log(2)) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_scaled_entropy` from probabilities and :func:`dilated_boxes` of the prediction.

    Same values, but the voxel entropy is computed inside the ROI only, never as a whole-image
    map: the cost follows the ROI, not the volume. ``prob`` is ``(B, K, *S)``.
    """
    totals, counts = [], []
    for b, item in enumerate(boxes):
        if item is None:
            totals.append(prob.new_zeros((), dtype=torch.float32))
            counts.append(0)
            continue
        box, region = item
        inside = prob[b][(slice(None), *box)][:, region]  # (K, |R|)
        totals.append(entropy(inside[None], head).sum())
        counts.append(int(region.sum()))
    whole = tuple(range(1, prob.ndim - 1))  # spatial axes of the (B, *S) entropy map
    n = torch.tensor(counts, device=prob.device)
    return _apply_empty_rule(torch.stack(totals), n, lambda: entropy(prob, head).mean(dim=whole), empty, max_value)


def _apply_empty_rule(total, n, whole_mean, empty, max_value):
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    is_empty = n == 0
    scores = total / n.clamp_min(1)
    if is_empty.any():
        if empty == "max":
            fill = torch.full_like(scores, max_value)
        elif empty == "whole":
            fill = whole_mean()
        else:
            fill = torch.full_like(scores, float("nan"))
        scores = torch.where(is_empty, fill, scores)
    return scores, is_empty


class PassAccumulator:
    """Running mean of probabilities over stochastic passes (MC dropout, TTA) and BALD.

    ``mutual_information = H(mean p) − mean H(p_n)``, accumulated pass by pass so that memory
    does not grow with the number of passes.
    """

    def __init__(self, head: str):
        self.head, self.n, self.sum_p, self.sum_h = head, 0, None, None

    def add(self, prob: torch.Tensor) -> None:
        prob = prob.float()
        h = entropy(prob, self.head)
        if self.n == 0:
            self.sum_p, self.sum_h = prob.clone(), h
        else:
            self.sum_p += prob
            self.sum_h += h
        self.n += 1

    def mean(self) -> torch.Tensor:
        if self.n == 0:
            raise ValueError("no passes added")
        return self.sum_p / self.n

    def mutual_information(self) -> torch.Tensor:
        """``(B, *S)`` BALD score, ≥ 0 up to rounding (clamped at 0)."""
        return (entropy(self.mean(), self.head) - self.sum_h / self.n).clamp_min(0)
