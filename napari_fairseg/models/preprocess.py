"""The data contract of a model: intensity normalisation and label ↔ target conversion.

Training and inference both go through these functions, so a checkpoint always sees data
prepared the way it was trained on.
"""

from __future__ import annotations

import numpy as np

from ..data.intensity import GREY_NOTE, LUMA, match_channels, normalise_intensity
from ..errors import InputDataError
from .networks import ModelConfig

__all__ = ["GREY_NOTE", "LUMA", "label_to_target", "match_channels", "normalise_intensity"]


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
