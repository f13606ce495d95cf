"""Train seed 003's mask generator on a fundus cohort and draw masks per group.

:func:`mask_generator_job` turns every labelled mask of a 2D fundus cohort into an outline cloud
(:func:`~napari_fairseg.data.points.mask_to_points`), trains one group-conditioned
:class:`~napari_fairseg.models.point_diffusion.PointDenoiser` on them (a generator job: one
progress event per step, cancellable, seeded) and writes it atomically to a weights-only file.
:func:`sample_masks` draws class maps of one group from such a file.

Refused with one line: a 3D cohort, an attribute that is not the cohort's or has one group, a
group with fewer than ``min_cases`` labelled masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.arrays import load_case
from ..data.attributes import bin_continuous
from ..data.manifest import Cohort
from ..data.points import MAX_POINTS, N_POINTS, Z0, check_shape, mask_to_points, points_to_mask
from ..errors import InputDataError
from ..models.checkpoint import load_generator, save_generator
from ..models.point_diffusion import (
    PointDenoiser,
    denormalise,
    diffusion_loss,
    normalise,
    sample,
    scheduler,
)
from ..options import MASK_GENERATOR
from ..progress import Job, Progress

FORMAT = "napari-fairseg-mask-generator"


@dataclass(frozen=True)
class MaskGeneratorConfig:
    """Settings of the mask generator's training.

    Attributes
    ----------
    steps, batch_size : int
        Optimiser steps and clouds per step (seed 003: 2,000,000 steps of 48 on a GPU).
    lr : float
    width : int
        The denoiser's channels.
    n_points : int
        Points per cloud (seed 003: 512).
    min_cases : int
        Fewest labelled masks a group needs to be learned.
    seed : int
    """

    steps: int = MASK_GENERATOR["steps"]
    batch_size: int = MASK_GENERATOR["batch_size"]
    lr: float = MASK_GENERATOR["lr"]
    width: int = MASK_GENERATOR["width"]
    n_points: int = N_POINTS
    min_cases: int = MASK_GENERATOR["min_cases"]
    seed: int = 0

    def __post_init__(self):
        check_config(self, steps=10**8, batch_size=4096, width=1024, n_points=MAX_POINTS, min_cases=10**6)


def check_config(config, **tops: int) -> None:
    """A generator config's whole-number fields ``1 … top``, its ``seed`` and its ``lr`` (> 0)."""
    for name, top in {**tops, "seed": 2**63 - 1}.items():
        value = getattr(config, name)
        low = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise ValueError(f"{name} must be a whole number {low} … {top}, got {value!r}")
    if isinstance(config.lr, bool) or not isinstance(config.lr, (int, float)) or not 0 < config.lr < float("inf"):
        raise ValueError(f"lr must be a number > 0, got {config.lr!r}")


def generator_groups(cohort: Cohort, attribute: str, min_cases: int) -> tuple[list[str], list[str], list[str]]:
    """Labelled case ids outside the test split (generated cases must not carry what the test
    cases look like), their groups, and the group names (sorted), after the checks."""
    if load_case(cohort, cohort.case_ids[0]).image.ndim != 3:  # (C, H, W): 2D
        raise InputDataError(cohort.source, "this is a cohort of 3D volumes: the mask generator models 2D fundus "
                             "masks (optic disc and cup) and does not support 3D")
    if attribute not in cohort.attributes:
        raise InputDataError(cohort.source, f"attribute {attribute!r} is not in the cohort (it has {cohort.attributes})")
    cases = cohort.cases
    labelled = cases[cases["label"].notna() & (cases["split"].astype("string").fillna("") != "test")
                     & ~cases["case_id"].isin(cohort.synthetic_ids)]
    groups = bin_continuous(labelled[attribute], name=attribute).astype("string")
    keep = groups.notna().to_numpy()
    ids, groups = labelled["case_id"].to_numpy()[keep].tolist(), groups[keep].tolist()
    names = sorted(set(groups))
    if len(names) < 2:
        raise InputDataError(cohort.source, f"attribute {attribute!r} has {len(names)} group(s) among the labelled "
                             f"cases ({names}): generating per group needs at least two")
    small = {g: groups.count(g) for g in names if groups.count(g) < min_cases}
    if small:
        raise InputDataError(cohort.source, f"too few labelled training masks (test split excluded) to learn a "
                             f"group's outlines (need {min_cases}): "
                             + ", ".join(f"{g} has {n}" for g, n in small.items()))
    return ids, groups, names


def mask_generator_job(cohort: Cohort, attribute: str, config: MaskGeneratorConfig | None = None, *,
                       out: str | Path | None = None) -> Job[dict]:
    """Train the group-conditioned mask generator; yields ``load`` per mask and ``train`` per step.

    Returns a dict: ``model`` (the denoiser), ``groups`` (names, in embedding order), ``shape``
    (the masks' ``(H, W)``), ``losses`` (per step) and ``path`` (``out``, written atomically).
    """
    config = config or MaskGeneratorConfig()
    ids, groups, names = generator_groups(cohort, attribute, config.min_cases)
    rng = np.random.default_rng([config.seed, 3])
    clouds, shape = [], None
    for i, cid in enumerate(ids):
        label = load_case(cohort, cid).label
        if shape is None:
            shape = label.shape
        elif label.shape != shape:
            raise InputDataError(cohort.source, f"case {cid!r} has a {label.shape} mask but the first has {shape}: "
                                 "the mask generator needs one image size")
        try:
            pts = mask_to_points(label, n_points=config.n_points, rng=rng)
        except ValueError as exc:
            raise InputDataError(cohort.source, f"case {cid!r}: {exc}") from None
        clouds.append(normalise(pts, shape, Z0))
        yield Progress("load", i + 1, len(ids), cid)
    data = torch.from_numpy(np.stack(clouds))
    index = torch.tensor([names.index(g) for g in groups])
    torch.manual_seed(config.seed)
    model, sched = PointDenoiser(len(names), config.width), scheduler()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(config.steps):
        pick = torch.randint(0, len(data), (config.batch_size,), generator=gen)
        loss = diffusion_loss(model, sched, data[pick], index[pick], generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        yield Progress("train", step + 1, config.steps, f"loss {losses[-1]:.4f}")
    model.eval()
    meta = {"attribute": attribute, "groups": names, "shape": list(shape), "z0": Z0, "cohort": cohort.name,
            "config": asdict(config), "n_cases": {g: groups.count(g) for g in names}}
    path = None if out is None else save_generator(out, FORMAT, meta, model)
    return {"model": model, "groups": names, "shape": tuple(shape), "losses": losses, "path": path, "meta": meta}


def check_generator_meta(meta) -> dict:
    """The parts every generator file's meta shares (a mapping, two or more distinct group
    names, an image shape), checked before they size anything: a file may be hostile."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a mapping, got {type(meta).__name__}")
    groups = meta.get("groups")
    if (not isinstance(groups, list) or not 2 <= len(groups) <= 10_000 or not all(isinstance(g, str) for g in groups)
            or len(set(groups)) != len(groups)):
        raise ValueError(f"groups must be a list of two or more distinct names, got {groups!r}")
    meta["shape"] = list(check_shape(tuple(meta.get("shape") or ())))
    return meta


def _check_meta(meta) -> dict:
    """The meta of a mask generator file (see :func:`check_generator_meta`), and its ``z0``, config."""
    meta = check_generator_meta(meta)
    z0 = meta.get("z0")
    if isinstance(z0, bool) or not isinstance(z0, (int, float)) or not 0 < z0 < float("inf"):
        raise ValueError(f"z0 must be a finite number > 0, got {z0!r}")
    MaskGeneratorConfig(**meta.get("config", {}))
    return meta


def _build(meta) -> PointDenoiser:
    meta = _check_meta(meta)
    return PointDenoiser(len(meta["groups"]), MaskGeneratorConfig(**meta["config"]).width)


def load_mask_generator(path: str | Path) -> tuple[PointDenoiser, dict]:
    """A mask generator file → ``(model, meta)``, weights only (no pickled objects are run).

    Raises
    ------
    InputDataError
        One line naming the file: unreadable, foreign, holding code, or with invalid metadata
        or weights.
    """
    return load_generator(path, FORMAT, "mask generator", _build)


def sample_masks(model: PointDenoiser, meta: dict, group: str, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` class maps ``(n, H, W)`` (0, 1 rim, 2 cup) of ``group``, seeded."""
    if group not in meta["groups"]:
        raise InputDataError(None, f"group {group!r} is not one the generator learned ({meta['groups']})")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise ValueError(f"n (masks to draw) must be a whole number 1 … 100000, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be a whole number 0 … 2**63 - 1, got {seed!r}")
    shape = tuple(meta["shape"])
    clouds = sample(model, scheduler(), meta["groups"].index(group), n=n,
                    n_points=int(meta["config"]["n_points"]), generator=torch.Generator().manual_seed(seed))
    return np.stack([points_to_mask(denormalise(c.numpy(), shape, meta["z0"]), shape) for c in clouds])
