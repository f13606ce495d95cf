"""Per-case segmentation losses, and the uncertainty-masked pseudo-label loss of seed 002.

Every loss returns one value per case ``(B,)`` so that fairness objectives can weight cases or
groups before reducing; all are differentiable in the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..options import LOSSES


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def soft_dice_loss(prob: torch.Tensor, onehot: torch.Tensor, *, mask: torch.Tensor | None = None,
                   smooth: float = 1e-5) -> torch.Tensor:
    """``1 − 2Σ p y / (Σ p + Σ y)`` per case and channel, averaged over channels → ``(B,)``.

    ``prob`` and ``onehot`` are ``(B, K, *S)``; ``mask`` (same shape or broadcastable) restricts
    the sums to the voxels where it is 1.
    """
    if mask is not None:
        prob, onehot = prob * mask, onehot * mask
    dims = tuple(range(2, prob.ndim))
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean(dim=1)


def per_case_loss(logits: torch.Tensor, target: torch.Tensor, *, loss: str, head: str) -> torch.Tensor:
    """Segmentation loss of each case.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, K, *S)``.
    target : torch.Tensor
        Sigmoid head: ``(B, 1, *S)`` float foreground; softmax head: ``(B, *S)`` int64 indices.
    loss : str
        ``bce`` (binary cross-entropy, sigmoid head only — seed 001) or ``dicece`` (soft Dice +
        cross-entropy, the FairSeg / FairMedSeg loss).

    Returns
    -------
    torch.Tensor
        ``(B,)`` float32.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    logits = logits.float()
    if head == "sigmoid":
        ce = _spatial_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
        if loss == "bce":
            return ce
        return ce + soft_dice_loss(torch.sigmoid(logits), target)
    if loss == "bce":
        raise ValueError("loss 'bce' needs a sigmoid head; use 'dicece' for a softmax head")
    ce = _spatial_mean(F.cross_entropy(logits, target, reduction="none"))
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
    return ce + soft_dice_loss(torch.softmax(logits, dim=1), onehot)


def pseudo_label_loss(logits: torch.Tensor, *, head: str, chi: float = 0.05, eps: float = 1e-9
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 002 Eq. 5–8: masked Dice against the model's own confident predictions.

    ``ŷ`` is the predicted probability of each output channel (sigmoid) or class (softmax);
    ``u = −ŷ log(ŷ + ε)`` (Eq. 5); the pseudo label is ``ŷ > 0.5`` (hard, detached) and only
    voxels with ``u < χ`` count (Eq. 6–7); the loss is the Dice of Eq. 8 over those voxels.
    No gradient reaches uncertain voxels.

    Returns
    -------
    loss : torch.Tensor
        ``(B,)``; 0 for a case with no confident voxel.
    kept : torch.Tensor
        ``(B,)`` fraction of voxels (× channels) kept.
    """
    prob = torch.sigmoid(logits.float()) if head == "sigmoid" else torch.softmax(logits.float(), dim=1)
    teacher = prob.detach()
    u = -teacher * torch.log(teacher + eps)
    mask = (u < chi).float()
    pseudo = (teacher > 0.5).float()
    loss = soft_dice_loss(prob, pseudo, mask=mask)
    kept = mask.flatten(1).mean(dim=1)
    return torch.where(kept > 0, loss, torch.zeros_like(loss)), kept
