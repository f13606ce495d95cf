"""Sliding-window inference that hands control back after every batch of windows.

MONAI's :func:`~monai.inferers.sliding_window_inference` runs all windows in one call with no
callback, so a job cannot yield (nor be cancelled) inside it. :func:`sliding_window_steps` does
the same computation — MONAI's own window grid (:func:`~monai.data.utils.dense_patch_slices`),
importance map (:func:`~monai.data.utils.compute_importance_map`), padding and blending, in the
same order — one batch of ``sw_batch_size`` windows per step, and yields between steps. Its
output equals MONAI's (``tests/test_inference.py`` checks it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F

Step = Callable[[], AbstractContextManager]


def _scan_interval(image_size, roi_size, overlap: float) -> tuple[int, ...]:
    """MONAI's window stride: the window where it spans the axis, else ``int(roi·(1 − overlap))`` ≥ 1."""
    return tuple(int(r) if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(image_size, roi_size, strict=True))


def window_batches(spatial: Sequence[int], roi_size: Sequence[int], sw_batch_size: int, batch: int = 1, *,
                   overlap: float = 0.25) -> int:
    """How many forward passes :func:`sliding_window_steps` makes for a ``(batch, C, *spatial)`` input."""
    from monai.data.utils import dense_patch_slices

    size = tuple(max(s, r) for s, r in zip(spatial, roi_size, strict=True))
    n = len(dense_patch_slices(size, tuple(roi_size), _scan_interval(size, roi_size, overlap)))
    return math.ceil(n * batch / sw_batch_size)


def sliding_window_steps(inputs: torch.Tensor, roi_size: Sequence[int], sw_batch_size: int,
                         predictor: Callable[[torch.Tensor], torch.Tensor], *, overlap: float = 0.25,
                         mode: str = "gaussian", step: Step | None = None) -> Generator[int, None, torch.Tensor]:
    """Gaussian-blended sliding-window prediction of ``inputs`` ``(B, C, *S)``, one window batch per step.

    Parameters
    ----------
    roi_size : sequence of int
        Window size per spatial axis.
    sw_batch_size : int
        Windows per forward pass.
    predictor : callable
        ``(N, C, *roi) → (N, K, *roi)``.
    overlap : float
        Overlap fraction of neighbouring windows in [0, 1).
    mode : str
        ``gaussian`` or ``constant`` window weights (MONAI's).
    step : callable, optional
        Returns a context manager entered around every step's computation (inference mode,
        autocast, an RNG swap): the generator never yields inside it, so a suspended job leaks
        no thread-local state to its consumer.

    Yields
    ------
    int
        The number of window batches done, after each one.

    Returns
    -------
    torch.Tensor
        ``(B, K, *S)`` blended output, in the input's dtype.
    """
    from contextlib import nullcontext

    from monai.data.utils import compute_importance_map, dense_patch_slices

    step = step or nullcontext
    nd = inputs.ndim - 2
    roi = tuple(int(r) for r in roi_size)
    batch_size, image_size_ = inputs.shape[0], tuple(inputs.shape[2:])
    dtype = inputs.dtype
    image_size = tuple(max(s, r) for s, r in zip(image_size_, roi, strict=True))
    pad = []
    for k in range(nd - 1, -1, -1):  # F.pad lists the last axis first
        diff = max(roi[k] - image_size_[k], 0)
        pad.extend([diff // 2, diff - diff // 2])
    with step():
        if any(pad):
            inputs = F.pad(inputs, pad=pad, mode="constant", value=0)
        slices = dense_patch_slices(image_size, roi, _scan_interval(image_size, roi, overlap))
        weight = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device=inputs.device, dtype=dtype)
        weight = weight[None, None].to(dtype=dtype, device=inputs.device)
    n_win = len(slices)
    total = n_win * batch_size
    output = count = None
    for done, start in enumerate(range(0, total, sw_batch_size), 1):
        with step():
            where = [(slice(i // n_win, i // n_win + 1), slice(None), *slices[i % n_win])
                     for i in range(start, min(start + sw_batch_size, total))]
            data = torch.cat([inputs[w] for w in where]) if sw_batch_size > 1 else inputs[where[0]]
            out = predictor(data)
            if output is None:
                output = torch.zeros((batch_size, out.shape[1], *image_size), dtype=dtype, device=inputs.device)
                count = torch.zeros((1, 1, *image_size), dtype=dtype, device=inputs.device)
                for s in slices:
                    count[(slice(None), slice(None), *s)] += weight
            out *= weight
            out = out.to(inputs.device)
            for w, p in zip(where, out, strict=True):
                output[w] += p
        yield done
    with step():
        output /= count
        if any(pad):
            keep = [slice(pad[2 * (nd - 1 - d)], pad[2 * (nd - 1 - d)] + image_size_[d]) for d in range(nd)]
            output = output[(slice(None), slice(None), *keep)]
    return output
