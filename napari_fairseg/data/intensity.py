"""Per-case, per-channel intensity preparation (numpy only): channel fitting, clipping, normalisation.

:func:`normalise_intensity` is the whole-image normalisation every model used before
preprocessing pipelines (:mod:`.pipeline`) and the bundled checkpoints still use;
:func:`normalise_channels` adds the percentile clip and the foreground statistics of a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputDataError

#: ITU-R BT.601 luma weights: how an RGB photo becomes the one grey channel of a 1-channel model
LUMA = (0.299, 0.587, 0.114)
#: the note a case converted by :func:`match_channels` carries to the user
GREY_NOTE = "RGB photo converted to grey (luminance, BT.601) for this 1-channel model"


def match_channels(image: np.ndarray, in_channels: int) -> tuple[np.ndarray, str | None]:
    """Fit a 2D RGB(A) photo ``(3 or 4, H, W)`` to a 1-channel model: its luminance ``(1, H, W)``.

    Returns the image (unchanged when it already fits, or cannot be fitted — the caller's
    channel check then says so) and a note for the user when it was converted, else ``None``.
    """
    c = image.shape[0]
    if c == in_channels or in_channels != 1 or c not in (3, 4) or image.ndim != 3:
        return image, None
    grey = np.tensordot(np.asarray(LUMA, np.float32), np.asarray(image[:3], np.float32), axes=1)
    return grey[None], GREY_NOTE


def normalise_intensity(image: np.ndarray, mode: str, *, source=None) -> np.ndarray:
    """Normalise each channel of one case.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, *spatial)`` intensities (any float or integer dtype).
    mode : str
        ``zscore`` (zero mean, unit variance per channel), ``minmax`` (1st–99th percentile to
        [0, 1], clipped) or ``none``.

    Returns
    -------
    numpy.ndarray
        ``(C, *spatial)`` float32. A constant channel becomes zeros rather than NaN.
    """
    img = np.asarray(image, dtype=np.float32)
    if not np.isfinite(img).all():
        raise InputDataError(source, "image holds NaN or infinite values; fix or mask them before inference")
    if mode == "none":
        return img.copy()
    out = np.empty_like(img)
    for c in range(img.shape[0]):
        ch = img[c]
        if mode == "zscore":
            mu, sd = float(ch.mean()), float(ch.std())
            out[c] = (ch - mu) / sd if sd > 0 else 0.0
        elif mode == "minmax":
            lo, hi = np.percentile(ch, (1, 99))
            out[c] = np.clip((ch - lo) / (hi - lo), 0, 1) if hi > lo else 0.0
        else:
            raise ValueError(f"intensity must be one of ('zscore', 'minmax', 'none'), got {mode!r}")
    return out


def normalise_channels(image: np.ndarray, *, clip: Sequence[float] | None, normalise: str,
                       statistics: str = "foreground", source=None) -> np.ndarray:
    """Clip and normalise each channel of one case ``(C, *spatial)``; float32.

    Parameters
    ----------
    clip : (float, float) or None
        Lower and upper percentile (0–100) at which each channel is clipped.
    normalise : str
        ``zscore``, ``minmax`` or ``none``.
    statistics : str
        ``foreground``: percentiles, mean and standard deviation over each channel's non-zero
        voxels, which alone are changed (zeros stay zero, so the values do not depend on how
        much empty field of view surrounds the scan; the z-score is MONAI's
        ``NormalizeIntensity(nonzero=True, channel_wise=True)``), ``minmax`` mapping their
        minimum and maximum to 0 and 1; a constant foreground becomes 0. ``tissue``: the
        statistics come from the channel's *tissue* voxels (:func:`tissue_mask`: above its
        background level plus :data:`TISSUE_LEVEL` of its range), then every voxel is clipped
        and normalised with them — a zero or a noisy background, a whole head or a crop of it
        give the tissue the same values, and the background falls to the lowest clipped
        value. ``image``: the whole image counts, and the normalisation is
        :func:`normalise_intensity`'s.
    """
    img = np.array(image, dtype=np.float32)
    if not np.isfinite(img).all():
        raise InputDataError(source, "image holds NaN or infinite values; fix or mask them before inference")
    if statistics == "image":
        if clip is not None:
            for c in range(img.shape[0]):
                lo, hi = np.percentile(img[c], clip)
                np.clip(img[c], lo, hi, out=img[c])
        return normalise_intensity(img, normalise, source=source)
    if statistics not in ("foreground", "tissue"):
        raise ValueError(f"statistics must be 'foreground', 'tissue' or 'image', got {statistics!r}")
    if normalise not in ("zscore", "minmax", "none"):
        raise ValueError(f"normalise must be one of ('zscore', 'minmax', 'none'), got {normalise!r}")
    for c in range(img.shape[0]):
        # the voxels that give the statistics, and the voxels that change
        fg = img[c] != 0 if statistics == "foreground" else tissue_mask(img[c])
        if not fg.any():  # all zero, or (tissue) constant: nothing to measure, zeros out
            img[c] = 0.0
            continue
        where = fg if statistics == "foreground" else np.ones_like(fg)
        ref = img[c][fg].astype(np.float64)
        vals = img[c][where].astype(np.float64)
        if clip is not None:
            lo, hi = np.percentile(ref, clip)
            ref, vals = np.clip(ref, lo, hi), np.clip(vals, lo, hi)
        if normalise == "zscore":
            sd = ref.std()
            vals = (vals - ref.mean()) / sd if sd > 0 else np.zeros_like(vals)
        elif normalise == "minmax":
            lo, hi = ref.min(), ref.max()
            vals = (vals - lo) / (hi - lo) if hi > lo else np.zeros_like(vals)
        img[c][where] = vals.astype(np.float32)
    return img


#: where tissue starts in a channel's range, from its background level (0.5th percentile) to its
#: 99.5th percentile: MRI tissue lies well above 10 % of it, background noise and air below
TISSUE_LEVEL = 0.1


def tissue_mask(channel: np.ndarray) -> np.ndarray:
    """Voxels of one channel ``(*spatial)`` above ``p0.5 + TISSUE_LEVEL · (p99.5 − p0.5)``.

    Independent of how much background surrounds the tissue, and of whether that background is
    exactly zero (a masked template) or noise (a magnitude MR image). Where over 99 % of the
    voxels share one value (a small object in air), the voxels above it; a constant channel has
    no tissue (an all-False mask).
    """
    lo, hi = np.percentile(channel, (0.5, 99.5))
    return channel > lo + TISSUE_LEVEL * (hi - lo) if hi > lo else channel > lo
