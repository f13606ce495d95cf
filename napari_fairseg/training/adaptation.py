"""The losses of seed 002 (UUDS, cross-domain adaptation) besides its pseudo-label loss.

UUDS trains a domain-adaptation branch and a segmentation branch together (seed 002 §3.3)::

    L = α (L_DD(x_g^s, x_g^t, T^d) + L_DD(x_g^{t→s}, x_g^t, T^d)) + β L_BSCL
        + γ (L_useg(Ŷ^{t→s}) + L_seg(Ŷ^s, Y^s)) + λ L_id(X̃^s, X^s)

This module holds the terms that are not a segmentation loss: the domain-distillation contrast
:func:`domain_distillation_loss` (Eq. 1–2), the in-batch supervised contrast
:func:`batch_contrastive_loss` (Eq. 4) and the identity loss :func:`identity_loss` (Eq. 9);
:func:`uuds_loss` sums them with the weights. ``L_useg`` (Eq. 5–8) is
:func:`~.losses.pseudo_label_loss`, ``L_seg`` the supervised :func:`~.losses.per_case_loss`.
The networks that produce the features are :mod:`napari_fairseg.models.uuds`. One term is ours,
not the paper's: :func:`distribution_loss` (``L_DM``), which by default takes Eq. 2's place.

Reading of the paper where it is ambiguous (written down, as issue 13 asks):

- Eq. 1–2 print their parentheses inconsistently; we read them as
  ``L_DD = log( e^{(1 − sim(a, T))/τ} / (e^{(1 − sim(a, T))/τ} + e^{(1 − sim(b, T))/τ}) )``,
  the log-share of the first feature's *distance* to the prompt: minimising it draws ``a`` (the
  source, or the translated target) to the prompt and pushes ``b`` (the target) away, which is
  what the text says it does. It is bounded below by ``−2/τ − log(1 + e^{−2/τ})``.
- Eq. 4 names ``P(i)`` and ``A(i)`` "the images with / without the object"; we use supervised
  contrastive learning's standard sets (Khosla et al. 2020, which the equation's form is):
  ``P(i)`` the other samples with ``i``'s label, ``A(i)`` every sample but ``i``, embeddings
  L2-normalised; an anchor without a positive adds nothing. The sum over anchors is the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def domain_distillation_loss(pulled: torch.Tensor, pushed: torch.Tensor, prompt: torch.Tensor, *,
                             tau: float = 0.07) -> torch.Tensor:
    """Seed 002 Eq. 1 (``pulled`` = source) and Eq. 2 (``pulled`` = target→source), mean over the batch.

    Parameters
    ----------
    pulled, pushed : torch.Tensor
        ``(B, C)`` global domain features ``x_g`` of the images drawn to and pushed from the prompt.
    prompt : torch.Tensor
        ``(C,)`` or ``(B, C)``: the domain prompt's embedding ``T^d``.
    tau : float
        Temperature τ > 0.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    prompt = prompt.expand_as(pulled)
    a = (1 - F.cosine_similarity(pulled, prompt, dim=-1)) / tau
    b = (1 - F.cosine_similarity(pushed, prompt, dim=-1)) / tau
    return (a - torch.logaddexp(a, b)).mean()


def batch_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, *, tau: float = 0.07) -> torch.Tensor:
    """Seed 002 Eq. 4: in-batch supervised contrast of the segmentation-prompted embeddings.

    ``Σ_i −1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )``.

    Parameters
    ----------
    z : torch.Tensor
        ``(B, D)`` embeddings (L2-normalised here).
    labels : torch.Tensor
        ``(B,)`` whether each image holds the object (or any class id).
    """
    if z.shape[0] != labels.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but labels has {labels.shape[0]}")
    z = F.normalize(z, dim=-1)
    n = z.shape[0]
    logits = z @ z.T / tau
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # A(i): everyone but i
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positive.sum(dim=1)
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(dim=1) / count.clamp(min=1)
    return per_anchor[count > 0].sum()


def identity_loss(reconstructed: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Seed 002 Eq. 9: ``‖X̃^s − X^s‖₁``, as the mean absolute difference per voxel."""
    if reconstructed.shape != source.shape:
        raise ValueError(f"shapes differ: {tuple(reconstructed.shape)} vs {tuple(source.shape)}")
    return (reconstructed - source).abs().mean()


def distribution_loss(translated: torch.Tensor, source: torch.Tensor, *, levels: int = 257) -> torch.Tensor:
    """``L_DM``: per channel, the 1D Wasserstein-1 distance between the intensities of a
    translated target batch and of a source batch, from their quantiles (mean over channels).

    Not in seed 002: it replaces Eq. 2 as what moves translations to the source domain (see
    ``TrainConfig.uuds_translation``). Its target, the source batch's intensity distribution, is
    fixed, where Eq. 2's is a learned prompt in a from-scratch encoder's feature space that a
    translation could satisfy without looking like the source. It is histogram matching
    (Nyúl & Udupa 1999) made a loss: the gradient reaches ``translated`` through its sorted values.

    Parameters
    ----------
    translated, source : torch.Tensor
        ``(B, C, *S)`` and ``(B', C, *S')`` images (any sizes; the same channel count).
    levels : int
        Quantile levels, evenly spaced on [0, 1] (each the nearest order statistic).

    Returns
    -------
    torch.Tensor
        Scalar, in the images' intensity units (for two batches whose values differ by a
        constant ``c``, ``|c|``).
    """
    for name, x in (("translated", translated), ("source", source)):
        if x.ndim < 3 or x.numel() == 0 or not x.is_floating_point():
            raise ValueError(f"{name} must be a non-empty floating-point (B, C, *S) tensor, got "
                             f"{x.dtype} of shape {tuple(x.shape)}")
    if translated.shape[1] != source.shape[1]:
        raise ValueError(f"channel counts differ: {translated.shape[1]} vs {source.shape[1]}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be a whole number >= 2, got {levels!r}")
    q = torch.linspace(0, 1, levels, device=translated.device)

    def quantiles(x: torch.Tensor) -> torch.Tensor:                       # (C, levels)
        values = x.transpose(0, 1).flatten(1).sort(dim=1).values
        return values[:, (q * (values.shape[1] - 1)).round().long()]

    return (quantiles(translated) - quantiles(source)).abs().mean()


#: ``start_polarity(polarity="auto")`` inverts a channel when that lowers L_DM by at least this share
POLARITY_MARGIN = 0.5


def start_polarity(source: torch.Tensor, target: torch.Tensor, *, polarity: str = "auto"
                   ) -> tuple[list[float], list[float], dict]:
    """The target pre-map's gain and offset per channel: as is, or inverted.

    A smooth gain-and-offset translation (:meth:`~napari_fairseg.models.uuds.UUDSNet.translate`)
    cannot learn to invert contrast by descent: the way from gain +1 to −1 passes a flat image,
    whose :func:`distribution_loss` is higher than either end (T2-like → T1 brain sample:
    0.48 as is, 0.96 flat, 0.21–0.30 inverted). With ``polarity="auto"`` each channel starts
    inverted (``b − x``, ``b`` matching the means) when that lowers ``L_DM`` against the source
    to under ``1 −`` :data:`POLARITY_MARGIN` of the target's as is (its mean matched too, so
    that a plain offset is not read as an inversion); otherwise as is (the identity: an adapted
    model starts as its source model). Histograms also differ when objects are larger in one
    cohort than in the other: the margin is wide, and ``"as-is"`` / ``"inverted"`` force the choice.

    Parameters
    ----------
    source, target : torch.Tensor
        ``(B, C, *S)`` samples of prepared source and target images, the same ``C``.
    polarity : {"auto", "as-is", "inverted"}

    Returns
    -------
    gain, offset : list of float
        Per channel: the multiplier (``1`` or ``−1``) and the offset added.
    record : dict
        ``{"as_is": [...], "inverted": [...], "polarity": polarity}``: ``L_DM`` per channel of
        each start (mean matched).
    """
    if polarity not in ("auto", "as-is", "inverted"):
        raise ValueError(f"polarity must be 'auto', 'as-is' or 'inverted', got {polarity!r}")
    if source.ndim < 3 or target.ndim < 3 or source.shape[1] != target.shape[1]:
        raise ValueError(f"source and target samples must be (B, C, *S) with the same C, got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    gain, offset, record = [], [], {"as_is": [], "inverted": [], "polarity": polarity}
    for c in range(source.shape[1]):
        s, t = source[:, c:c + 1].float(), target[:, c:c + 1].float()
        shift, b = float(s.mean() - t.mean()), float(s.mean() + t.mean())
        as_is, inverted = float(distribution_loss(t + shift, s)), float(distribution_loss(b - t, s))
        record["as_is"].append(round(as_is, 4))
        record["inverted"].append(round(inverted, 4))
        flip = polarity == "inverted" or (polarity == "auto" and inverted < (1 - POLARITY_MARGIN) * as_is)
        gain.append(-1.0 if flip else 1.0)
        offset.append(b if flip else 0.0)
    return gain, offset, record


def uuds_loss(*, dd_source: torch.Tensor, dd_translated: torch.Tensor, contrast: torch.Tensor,
              pseudo: torch.Tensor, supervised: torch.Tensor, identity: torch.Tensor,
              alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0, lam: float = 1.0) -> torch.Tensor:
    """Seed 002 §3.3's total: ``α(L_DD^s + L_DD^{t→s}) + β L_BSCL + γ(L_useg + L_seg) + λ L_id``
    (the paper's weights are all 1). With ``uuds_translation="match"``, ``dd_translated`` is
    :func:`distribution_loss` in place of Eq. 2."""
    return alpha * (dd_source + dd_translated) + beta * contrast + gamma * (pseudo + supervised) + lam * identity
