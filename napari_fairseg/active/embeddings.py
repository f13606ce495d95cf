"""Case embeddings for the fair-quota strategies (seed 000's Fair-Attr / Fair-Poly / Fair-AP).

The paper embeds images with CLIP; no CLIP weights can be downloaded here, so the source is
pluggable (METHODS §5):

``encoder``   (default) the current segmentation network's deepest feature map, globally
              average-pooled: a forward hook on every convolution keeps the output with the
              smallest spatial size (the bottleneck of a U-Net, the last encoder stage of
              SegResNet / SwinUNETR). One forward pass per case.
a file path   a local image encoder that maps a normalised image ``(1, C, *S)`` to ``(1, D)``
              or to a feature map ``(1, D, *S')`` (pooled the same way): a ``.pt2`` file from
              ``torch.export.save`` (an exported program for the cohort's image size), or a
              TorchScript file from ``torch.jit.save`` (deprecated by PyTorch, still read).
              Neither format holds pickled Python, so loading one runs no arbitrary code.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.arrays import load_image
from ..data.manifest import Cohort
from ..errors import InputDataError
from ..models.networks import ModelConfig, pad_to_divisible, size_divisor
from ..models.preprocess import normalise_intensity
from ..progress import Job, Progress

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def load_encoder(path: str | Path, device: torch.device | str = "cpu"):
    """A local image encoder from ``path``: ``.pt2`` (``torch.export``) or TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "encoder file not found")
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module().to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still valid
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        raise InputDataError(path, f"not an image encoder ({type(exc).__name__}: {exc}); save one with "
                             "torch.export.save(torch.export.export(module, (example,)), 'encoder.pt2')") from exc


def _pool(features: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` or ``(B, D, *S)`` → ``(B, D)`` (global average pool)."""
    return features if features.ndim == 2 else features.flatten(2).mean(dim=2)


class _Bottleneck:
    """Forward hooks that keep the convolution output with the smallest spatial size."""

    def __init__(self, model: nn.Module):
        self.best: torch.Tensor | None = None
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, _CONV)]
        if not self.handles:
            raise ValueError("the network has no convolution to take features from")

    def _hook(self, module, args, out):
        size = out[0, 0].numel()
        # smallest spatial size wins; at equal size the later (deeper) one wins
        if self.best is None or size <= self.best[0, 0].numel():
            self.best = out.detach()

    def close(self):
        for h in self.handles:
            h.remove()


def embeddings_job(cohort: Cohort, case_ids: Sequence[str], *, model: nn.Module, config: ModelConfig,
                   encoder: str | Path = "encoder", device: torch.device | str = "cpu") -> Job[dict[str, np.ndarray]]:
    """One embedding vector ``(D,)`` per case; yields progress per case.

    Images are normalised as for the network, centre-cropped to its patch size when larger
    (bounded memory on big volumes) and padded to its size divisor.
    """
    device = torch.device(device)
    net = model if encoder == "encoder" else load_encoder(encoder, device)
    hooks = _Bottleneck(model) if encoder == "encoder" else None
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        for i, cid in enumerate(case_ids):
            x = normalise_intensity(load_image(cohort, cid).image, config.intensity, source=cid)
            if config.patch_size is not None:
                sl = [slice(max(0, (s - p) // 2), max(0, (s - p) // 2) + p)
                      for s, p in zip(x.shape[1:], config.patch_size, strict=True)]
                x = x[(slice(None), *sl)]
            t = torch.from_numpy(np.ascontiguousarray(x))[None]
            if hooks is not None:
                t = pad_to_divisible(t, size_divisor(config))[0]
            with torch.no_grad():
                res = net(t.to(device))
            feats = hooks.best if hooks is not None else res
            if not isinstance(feats, torch.Tensor) or feats.ndim < 2:
                raise InputDataError(encoder, f"encoder returned {type(feats).__name__}, expected a tensor "
                                     "(1, D) or (1, D, *S)")
            out[cid] = _pool(feats.float())[0].cpu().numpy()
            if hooks is not None:
                hooks.best = None
            yield Progress("embed", i + 1, len(case_ids), cid)
    finally:
        if hooks is not None:
            hooks.close()
        model.train(was_training)
    return out
