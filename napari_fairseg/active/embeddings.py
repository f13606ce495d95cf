"""Case embeddings for the fair-quota strategies (seed 000's Fair-Attr / Fair-Poly / Fair-AP).

The paper embeds images with CLIP; no CLIP weights can be downloaded here, so the source is
pluggable (METHODS §5):

``encoder``   (default) the current segmentation network's deepest feature map, globally
              average-pooled: a forward hook on every convolution keeps the output with the
              smallest spatial size (the bottleneck of a U-Net, the last encoder stage of
              SegResNet / SwinUNETR). One forward pass per case.
a file path   a FairSeg checkpoint (``fairseg train``, or a round's ``models/round_*.pt``) of
              another network: the network named in it is built from our own registry
              (:mod:`napari_fairseg.models`), its weights read with ``weights_only=True``, and its
              bottleneck features used the same way, with its own normalisation.

Files that carry code are refused, never loaded: TorchScript modules run their own code when
loaded (``__setstate__``) and when called (``torch.from_file`` writes files), and loading a
``torch.export`` ``.pt2`` unpickles its sample inputs without restriction when the safe load
fails. A checkpoint is data only: the network's code is ours.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.manifest import Cohort
from ..data.pipeline import Pipeline, legacy_pipeline, pipeline_of, prepare
from ..errors import InputDataError
from ..models.checkpoint import Checkpoint, load_checkpoint
from ..models.networks import ModelConfig, pad_to_divisible, size_divisor
from ..progress import Job, Progress

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


CODE_REFUSED = ("refused: TorchScript/ExportedProgram files can run code when loaded; give a FairSeg "
                "checkpoint (.pt) instead")


def load_encoder(path: str | Path) -> Checkpoint:
    """The encoder checkpoint at ``path``, read as data only (the network is built by the caller).

    Raises
    ------
    InputDataError
        The file is missing, is a TorchScript or ``torch.export`` archive (refused unopened:
        either can run code), holds pickled Python objects, or is not a FairSeg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "encoder file not found")
    if path.suffix == ".pt2" or _carries_code(path):
        raise InputDataError(path, CODE_REFUSED)
    ckpt = load_checkpoint(path)  # weights_only=True: refuses pickled objects
    if ckpt.state_dict is None:
        raise InputDataError(path, "the checkpoint holds no weights to encode with")
    return ckpt


def _carries_code(path: Path) -> bool:
    """Whether ``path`` is a TorchScript or ``torch.export`` archive (read as a zip listing only)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    marks = ("constants.pkl", "archive_format", "serialized_exported_program.json", "model.json")
    return any(n.rsplit("/", 1)[-1] in marks or "/code/" in n for n in names)


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
                   encoder: str | Path = "encoder", device: torch.device | str = "cpu",
                   pipeline: Pipeline | None = None) -> Job[dict[str, np.ndarray]]:
    """One embedding vector ``(D,)`` per case (the encoding network's pooled bottleneck); yields
    progress per case.

    ``encoder`` is ``"encoder"`` (``model`` itself, configured by ``config``) or the path of a
    FairSeg checkpoint (:func:`load_encoder`), whose own network and configuration are used.
    Images are prepared as for the encoding network — ``pipeline`` (the model's,
    :func:`~napari_fairseg.data.pipeline.pipeline_of`; default: whole-image normalisation as
    ``config.intensity``), or an encoder checkpoint's own — centre-cropped to its patch size
    when larger (bounded memory on big volumes) and padded to its size divisor.
    """
    device = torch.device(device)
    if str(encoder) != "encoder":
        ckpt = load_encoder(encoder)
        config = ckpt.config
        model = ckpt.build(device)
        pipeline = pipeline_of(ckpt)
    pipeline = pipeline if pipeline is not None else legacy_pipeline(config)
    hooks = _Bottleneck(model)
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        for i, cid in enumerate(case_ids):
            x = prepare(cohort, pipeline, cid)["image"].as_tensor().numpy()
            if x.ndim - 1 != config.spatial_dims or x.shape[0] != config.in_channels:
                raise InputDataError(encoder, f"the encoder takes {config.in_channels}-channel {config.spatial_dims}D "
                                     f"images but case {cid} is {x.shape[0]}-channel {x.ndim - 1}D")
            if config.patch_size is not None:
                sl = [slice(max(0, (s - p) // 2), max(0, (s - p) // 2) + p)
                      for s, p in zip(x.shape[1:], config.patch_size, strict=True)]
                x = x[(slice(None), *sl)]
            t = pad_to_divisible(torch.from_numpy(np.ascontiguousarray(x))[None], size_divisor(config))[0]
            with torch.no_grad():
                model(t.to(device))
            out[cid] = _pool(hooks.best.float())[0].cpu().numpy()
            hooks.best = None
            yield Progress("embed", i + 1, len(case_ids), cid)
    finally:
        hooks.close()
        model.train(was_training)
    return out
