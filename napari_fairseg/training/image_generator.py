"""Train seed 003's image generator on a fundus cohort and paint images for given masks.

:func:`image_generator_job` trains one mask- and group-conditioned
:mod:`~napari_fairseg.models.image_diffusion` model on every labelled image–mask pair of a 2D
cohort, resized to ``size × size`` (a generator job: one progress event per step, cancellable,
seeded) and writes it atomically to a weights-only file. :func:`paint` draws images for masks
from such a model and returns them at the masks' own size.

The same checks as the mask generator's refuse a 3D cohort, an attribute with one group and a
group with fewer than ``min_cases`` labelled pairs (:func:`.mask_generator.generator_groups`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.arrays import load_case
from ..data.manifest import Cohort
from ..errors import InputDataError
from ..models.checkpoint import load_generator, save_generator
from ..models.image_diffusion import (
    SAMPLE_STEPS,
    image_denoiser,
    image_loss,
    sample_images,
    train_scheduler,
)
from ..options import IMAGE_GENERATOR
from ..progress import Job, Progress
from .mask_generator import check_config, check_generator_meta, generator_groups

FORMAT = "napari-fairseg-image-generator"


@dataclass(frozen=True)
class ImageGeneratorConfig:
    """Settings of the image generator's training.

    Attributes
    ----------
    size : int
        Side in pixels the model works at (images are resized to ``size × size`` and painted
        images back to the masks' size); a multiple of 4. Seed 003: 512.
    width : int
        Features of the UNet's first level (a multiple of 8).
    steps, batch_size : int
        Optimiser steps and pairs per step.
    lr : float
    sample_steps : int
        DDIM steps when painting (seed 003: 20).
    min_cases : int
        Fewest labelled pairs a group needs.
    seed : int
    """

    size: int = IMAGE_GENERATOR["size"]
    width: int = IMAGE_GENERATOR["width"]
    steps: int = IMAGE_GENERATOR["steps"]
    batch_size: int = IMAGE_GENERATOR["batch_size"]
    lr: float = IMAGE_GENERATOR["lr"]
    sample_steps: int = SAMPLE_STEPS
    min_cases: int = IMAGE_GENERATOR["min_cases"]
    seed: int = 0

    def __post_init__(self):
        check_config(self, size=1024, width=512, steps=10**8, batch_size=4096, sample_steps=1000, min_cases=10**6)
        if self.size % 4 or self.width % 8:
            raise ValueError(f"size must be a multiple of 4 and width of 8, got size {self.size}, width {self.width}")


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()


def image_generator_job(cohort: Cohort, attribute: str, config: ImageGeneratorConfig | None = None, *,
                        out: str | Path | None = None) -> Job[dict]:
    """Train the image generator; yields ``load`` per case and ``train`` per step.

    Returns a dict: ``model``, ``meta`` (groups in embedding order, channels, intensity range
    ``low`` / ``high``, the cohort's ``shape``), ``losses`` (per step) and ``path`` (``out``,
    written atomically).
    """
    config = config or ImageGeneratorConfig()
    ids, groups, names = generator_groups(cohort, attribute, config.min_cases)
    images, masks, shape, channels = [], [], None, None
    for i, cid in enumerate(ids):
        case = load_case(cohort, cid)
        if shape is None:
            shape, channels = case.label.shape, case.image.shape[0]
        elif case.image.shape[0] != channels:
            raise InputDataError(cohort.source, f"case {cid!r} has {case.image.shape[0]} image channel(s) but "
                                 f"{ids[0]!r} has {channels}: the image generator needs one channel count")
        elif case.label.shape != shape:
            raise InputDataError(cohort.source, f"case {cid!r} is {case.label.shape} but the first is {shape}: the "
                                 "image generator needs one image size")
        images.append(np.asarray(case.image, np.float32))
        masks.append(np.asarray(case.label, np.int64))
        yield Progress("load", i + 1, len(ids), cid)
    stack = np.stack(images)
    if not np.isfinite(stack).all():
        raise InputDataError(cohort.source, "the images hold NaN or infinite values")
    low, high = float(stack.min()), float(stack.max())
    if high <= low:
        raise InputDataError(cohort.source, f"every image has the one value {low}: nothing to learn")
    side = (config.size, config.size)
    x = _resize(torch.from_numpy((stack - low) / (high - low) * 2 - 1), side)
    m = _resize_masks(torch.from_numpy(np.stack(masks)), side)
    index = torch.tensor([names.index(g) for g in groups])
    torch.manual_seed(config.seed)
    model, sched = image_denoiser(x.shape[1], len(names), config.width), train_scheduler()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(config.steps):
        pick = torch.randint(0, len(x), (config.batch_size,), generator=gen)
        loss = image_loss(model, sched, x[pick], m[pick], index[pick], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        yield Progress("train", step + 1, config.steps, f"loss {losses[-1]:.4f}")
    model.eval()
    meta = {"attribute": attribute, "groups": names, "shape": list(shape), "channels": int(x.shape[1]),
            "low": low, "high": high, "cohort": cohort.name, "config": asdict(config),
            "n_cases": {g: groups.count(g) for g in names}}
    path = None if out is None else save_generator(out, FORMAT, meta, model)
    return {"model": model, "meta": meta, "losses": losses, "path": path}


def _build(meta):
    meta = check_generator_meta(meta)
    groups = meta["groups"]
    channels = meta.get("channels")
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 16:
        raise ValueError(f"channels must be a whole number 1 … 16, got {channels!r}")
    low, high = meta.get("low"), meta.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in (low, high)) \
            or not high > low:
        raise ValueError(f"intensity range must be finite numbers low < high, got {low!r}, {high!r}")
    config = ImageGeneratorConfig(**meta.get("config", {}))
    return image_denoiser(channels, len(groups), config.width)


def load_image_generator(path: str | Path):
    """An image generator file → ``(model, meta)``, weights only (no pickled objects are run).

    Raises
    ------
    InputDataError
        One line naming the file: unreadable, foreign, holding code, or with invalid metadata or weights.
    """
    return load_generator(path, FORMAT, "image generator", _build)


def paint(model, meta: dict, masks: np.ndarray, group: str, *, seed: int = 0) -> np.ndarray:
    """Images ``(n, C, H, W)`` in the cohort's intensity range for class maps ``masks (n, H, W)``
    of ``group`` (at any size: painted at the model's size, returned at the masks')."""
    if group not in meta["groups"]:
        raise InputDataError(None, f"group {group!r} is not one the generator learned ({meta['groups']})")
    masks = np.asarray(masks)
    if masks.ndim != 3 or not np.isin(masks, (0, 1, 2)).all():
        raise ValueError(f"masks must be (n, H, W) class maps of 0, 1, 2; got shape {masks.shape}")
    config = ImageGeneratorConfig(**meta["config"])
    side = (config.size, config.size)
    small = _resize_masks(torch.from_numpy(masks.astype(np.int64)), side)
    groups = torch.full((len(masks),), meta["groups"].index(group), dtype=torch.long)
    x = sample_images(model, small, groups, channels=meta["channels"], steps=config.sample_steps,
                      generator=torch.Generator().manual_seed(seed))
    x = _resize(x, masks.shape[1:]).clamp(-1, 1)
    return ((x + 1) / 2 * (meta["high"] - meta["low"]) + meta["low"]).numpy()
