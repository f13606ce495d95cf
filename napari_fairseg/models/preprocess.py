"""The data contract of a model: intensity normalisation and label ↔ target conversion.

Training and inference both go through these functions, so a checkpoint always sees data
prepared the way it was trained on.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputDataError
from .networks import ModelConfig

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


def label_to_target(label: np.ndarray, config: ModelConfig, *, source=None) -> np.ndarray:
    """Class map ``(*spatial)`` → training target.

    Returns ``(1, *spatial)`` float32 foreground for a sigmoid head, or ``(*spatial)`` int64
    indices into ``config.label_values`` for a softmax head.
    """
    label = np.asarray(label)
    values = np.asarray(config.label_values)
    present = np.unique(label)
    unknown = np.setdiff1d(present, values)
    if unknown.size:
        raise InputDataError(source, f"label holds values {unknown.tolist()} the model does not predict "
                             f"(it predicts {list(config.label_values)})")
    if config.head == "sigmoid":
        return (label == values[1]).astype(np.float32)[None]
    lut = np.zeros(int(max(values.max(), present.max())) + 1, dtype=np.int64)
    lut[values] = np.arange(len(values))
    return lut[label.astype(np.int64)]
