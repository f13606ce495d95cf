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

import torch
import torch.nn.functional as F

EMPTY_RULES = ("max", "whole", "nan")


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))


def probabilities(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Logits ``(B, K, *S)`` → probabilities of the same shape (sigmoid or softmax)."""
    return torch.sigmoid(logits) if head == "sigmoid" else torch.softmax(logits, dim=1)


def entropy(prob: torch.Tensor, head: str) -> torch.Tensor:
    """Voxel entropy ``(B, *S)`` of probabilities ``(B, K, *S)``, in nats."""
    prob = prob.float()
    if head == "sigmoid":
        p = prob[:, 0]
        return -(_xlogx(p) + _xlogx(1 - p))
    return -_xlogx(prob).sum(dim=1)


def max_entropy(head: str, n_classes: int) -> float:
    """The largest possible voxel entropy: ``log 2`` for a sigmoid head, ``log K`` for softmax."""
    return math.log(2) if head == "sigmoid" else math.log(n_classes)


def decode(prob: torch.Tensor, head: str, label_values) -> torch.Tensor:
    """Probabilities ``(B, K, *S)`` → class map ``(B, *S)`` int16 of ``label_values``.

    Sigmoid: foreground where ``p > 0.5``; softmax: arg-max class.
    """
    values = torch.as_tensor(list(label_values), dtype=torch.int16, device=prob.device)
    idx = (prob[:, 0] > 0.5).long() if head == "sigmoid" else prob.argmax(dim=1)
    return values[idx]


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``mask`` ``(B, *S)`` by a ``(2r+1)^d`` cube (Chebyshev radius ``r`` voxels)."""
    if radius <= 0:
        return mask.bool()
    x = mask[:, None].float()
    pool = F.max_pool3d if mask.ndim == 4 else F.max_pool2d
    return pool(x, kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


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
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    dims = tuple(range(1, ent.ndim))
    roi = roi.bool()
    n = roi.sum(dim=dims)
    total = torch.where(roi, ent.float(), torch.zeros((), device=ent.device)).sum(dim=dims)
    is_empty = n == 0
    scores = total / n.clamp_min(1)
    if is_empty.any():
        if empty == "max":
            fill = torch.full_like(scores, max_value)
        elif empty == "whole":
            fill = ent.float().mean(dim=dims)
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
