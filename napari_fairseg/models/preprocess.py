"""The data contract of a model: intensity normalisation and label ↔ target conversion.

Training and inference both go through these functions, so a checkpoint always sees data
prepared the way it was trained on.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputDataError
from .networks import ModelConfig


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
