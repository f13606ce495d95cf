"""The trainer: a generator of progress events that trains, validates per group and checkpoints.

``train_job`` is seeded (same seed, same weights on the same device), resumable (each epoch's
checkpoint holds the optimizer and objective state; epoch ``e`` draws its batches from
``(seed, e)``, so a resumed run equals an uninterrupted one), cancellable between steps (the
last completed epoch's checkpoint and log stay intact: both are written atomically), and able
to fine-tune from a checkpoint on a grown labelled set (active learning).

Cases stream from disk through a persistent cache of preprocessed cases (:mod:`.data`); the
trainer never holds the cohort. Under ``torchrun`` it trains on several processes
(:mod:`.distributed`). The job is a sequence of stages composed with ``yield from``:
:func:`_set_up` (cases, model settings, objective), :func:`_load_data` (the cache),
:func:`_build_model` (network, optimizer), then per epoch :func:`_train_epoch`,
:func:`_validate_epoch` and :func:`_checkpoint`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.arrays import load_image
from ..data.atomic import write_csv_atomic
from ..data.attributes import bin_continuous
from ..data.manifest import Cohort
from ..errors import FairSegError, InputDataError
from ..inference.device import autocast, describe
from ..inference.distributed import Distributed, session
from ..inference.domain import cohort_geometry, spacing_unit, training_geometry
from ..inference.predict import InferenceConfig, Predictor
from ..metrics.overlap import overlap_metrics
from ..models.checkpoint import (
    Checkpoint,
    check_compatible,
    cohort_label_values,
    export_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ..models.networks import ModelConfig, build_network
from ..options import TRAIN, UUDS_POLARITIES, UUDS_TRANSLATIONS
from ..progress import Job, Progress
from .adaptation import (
    batch_contrastive_loss,
    distribution_loss,
    domain_distillation_loss,
    identity_loss,
    start_polarity,
    uuds_loss,
)
from .losses import LOSSES, per_case_loss, pseudo_label_loss
from .objectives import OBJECTIVES, Objective, make_objective

#: TrainConfig fields a resumed run may change (they do not change what is trained)
RESUME_MAY_CHANGE = ("epochs", "device", "amp", "workers", "cache")

if TYPE_CHECKING:  # the data path imports MONAI's transforms (seconds): the stages import it when they run
    from . import data as streams
    from .data import Pipeline

GROUP_ATTRIBUTE_PREFERENCE = ("group", "race", "sex", "gender")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes
    ----------
    epochs : int
        Total epochs (a resumed run continues up to this number).
    batch_size : int
    lr : float
        Adam learning rate (seed 001 used 1e-4 for 200 epochs; the default suits short runs).
    loss : str
        ``dicece`` (soft Dice + cross-entropy; the default: it learns small structures far faster
        than BCE), ``bce`` (seed 001's loss, sigmoid head only) or ``auto`` (BCE for a sigmoid
        head, Dice + CE for softmax).
    fairness : str
        One of :data:`~.objectives.OBJECTIVES`.
    group_attribute : str or None
        Attribute whose groups get per-group validation Dice (and define GroupDRO / equal-scale
        groups); default: the first of ``group``, ``race``, ``sex``, ``gender`` present.
    attributes : tuple of str
        Attributes for divergence subgroup discovery (default: all of the cohort's).
    alpha, min_support : float
        Divergence objective: weight of the plain loss term, DivExplorer minimum support.
    dro_eta : float
        GroupDRO step size.
    equal_scale_target : int or None
        Equal-scale cases per group per epoch (default: the largest group's size).
    pseudo_label_split : str or None
        Unlabelled target-domain cases (this split) trained with the pseudo-label loss.
    pseudo_weight, chi : float
        Weight of the pseudo-label term; its uncertainty threshold χ (seed 002 Eq. 6).
    val_fraction : float
        Share of the training cases held out for validation (stratified by group) when the
        cohort has no ``val`` split and no validation ids are given.
    seed : int
    device : str
        ``auto``, ``cuda``, ``mps`` or ``cpu``.
    amp : bool
        Mixed precision on CUDA.
    fg_crop_prob : float
        Probability that a training crop is centred on a foreground voxel (patch training only).
    augment : bool
        Random flips (every axis but the first, which runs left–right), a light affine and an
        intensity scale/shift on every training read (:func:`.data.random_transforms`).
    workers : int
        DataLoader worker processes that read and augment cases (0: in this process).
    cache : str or None
        Folder of the persistent cache of preprocessed cases (default
        ``<cache_dir()>/preprocessed``, see :func:`~napari_fairseg.data.synthetic.cache_dir`).
    spacing : tuple of float or None
        3D: the voxel size (mm, per RAS axis) every case is resampled to before training — and
        before prediction, since the pipeline is stored in the checkpoint. Default: the training
        cases' median spacing (:func:`~napari_fairseg.data.pipeline.pipeline_for`); seed 004
        uses 1 mm isotropic. A fine-tuned or resumed model keeps its checkpoint's pipeline.
    uuds_weights : tuple of 4 float
        Seed 002's α (domain distillation), β (in-batch contrast), γ (pseudo-label and
        supervised segmentation) and λ (identity) for an adapted model (:mod:`.adapt`).
    uuds_translation : {"match", "prompt"}
        What moves an adapted model's translations to the source domain (weighted by α):
        ``"match"`` (default), :func:`.adaptation.distribution_loss` between translated target
        and source intensities; ``"prompt"``, the paper's Eq. 2 (the translation's domain
        feature drawn to the learned domain prompt), which on our measurements leaves the shift
        in place (README › Benchmarks › Cross-domain adaptation).
    uuds_polarity : {"auto", "as-is", "inverted"}
        How a new adapted model's target pre-map starts (:func:`.adaptation.start_polarity`):
        chosen per channel from the intensity distributions, or forced.
    uncertainty_mask : bool
        Whether the pseudo-label loss keeps only voxels with uncertainty below ``chi`` (seed 002
        Eq. 6–7); false keeps every voxel (the paper's "without uncertainty" ablation).
    tau : float
        Temperature of seed 002's two contrasts (Eq. 1, 2 and 4).
    """

    epochs: int = TRAIN["epochs"]
    batch_size: int = TRAIN["batch_size"]
    lr: float = TRAIN["lr"]
    loss: str = TRAIN["loss"]
    fairness: str = TRAIN["fairness"]
    group_attribute: str | None = None
    attributes: tuple[str, ...] = ()
    alpha: float = TRAIN["alpha"]
    min_support: float = TRAIN["min_support"]
    dro_eta: float = TRAIN["dro_eta"]
    equal_scale_target: int | None = None
    pseudo_label_split: str | None = None
    pseudo_weight: float = TRAIN["pseudo_weight"]
    chi: float = TRAIN["chi"]
    val_fraction: float = TRAIN["val_fraction"]
    seed: int = TRAIN["seed"]
    device: str = TRAIN["device"]
    amp: bool = TRAIN["amp"]
    fg_crop_prob: float = TRAIN["fg_crop_prob"]
    augment: bool = TRAIN["augment"]
    workers: int = TRAIN["workers"]
    cache: str | None = TRAIN["cache"]
    spacing: tuple[float, ...] | None = None
    uuds_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    uuds_translation: str = "match"
    uuds_polarity: str = "auto"
    uncertainty_mask: bool = True
    tau: float = 0.07

    def __post_init__(self):
        if self.loss != "auto" and self.loss not in LOSSES:
            raise ValueError(f"loss must be 'auto' or one of {LOSSES}, got {self.loss!r}")
        if self.fairness not in OBJECTIVES:
            raise ValueError(f"fairness must be one of {OBJECTIVES}, got {self.fairness!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.fg_crop_prob <= 1:
            raise ValueError(f"fg_crop_prob must be in [0, 1], got {self.fg_crop_prob}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        object.__setattr__(self, "attributes", tuple(self.attributes))
        weights = tuple(float(w) for w in self.uuds_weights)
        if len(weights) != 4 or not all(0 <= w < float("inf") for w in weights) or not any(weights):
            raise ValueError("uuds_weights must be four finite weights >= 0, not all 0 (alpha, beta, gamma, "
                             f"lambda), got {self.uuds_weights}")
        object.__setattr__(self, "uuds_weights", weights)
        if self.uuds_translation not in UUDS_TRANSLATIONS:
            raise ValueError(f"uuds_translation must be one of {UUDS_TRANSLATIONS}, got {self.uuds_translation!r}")
        if self.uuds_polarity not in UUDS_POLARITIES:
            raise ValueError(f"uuds_polarity must be one of {UUDS_POLARITIES}, got {self.uuds_polarity!r}")
        if not 0 < self.tau < float("inf"):
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0 < self.chi < float("inf"):
            raise ValueError(f"chi (the pseudo-label uncertainty threshold) must be > 0, got {self.chi}")
        object.__setattr__(self, "cache", None if self.cache is None else str(self.cache))
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or not all(s > 0 for s in spacing):
                raise ValueError(f"spacing must be three voxel sizes > 0 mm (X, Y, Z), got {self.spacing}")
            object.__setattr__(self, "spacing", spacing)

    def resolved_loss(self, head: str) -> str:
        return ("bce" if head == "sigmoid" else "dicece") if self.loss == "auto" else self.loss

    def same_run_as(self, other: TrainConfig) -> bool:
        """Whether two configs describe the same run, up to the number of epochs, the device and
        how cases are read (workers, cache folder: neither changes what is trained)."""
        a, b = asdict(self), asdict(other)
        for k in RESUME_MAY_CHANGE:
            a.pop(k), b.pop(k)
        return a == b


@dataclass
class TrainResult:
    """What :func:`train_job` returns: the trained model (eval mode), its config and the log.

    ``fed`` lists, per epoch trained, the case ids this process trained on in order (under
    ``torchrun``, this rank's share).
    """

    model: nn.Module
    config: ModelConfig
    log: pd.DataFrame
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)
    fed: list[list[str]] = field(default_factory=list)


# --------------------------------------------------------------------------- set-up helpers
def default_group_attribute(cohort: Cohort) -> str | None:
    attrs = cohort.attributes
    for name in GROUP_ATTRIBUTE_PREFERENCE:
        if name in attrs:
            return name
    return attrs[0] if attrs else None


def model_config_for(cohort: Cohort, *, network: str = "light_unet", **overrides) -> ModelConfig:
    """A :class:`ModelConfig` fitted to ``cohort`` (dims and channels from its first case)."""
    first = load_image(cohort, cohort.case_ids[0])
    values = cohort_label_values(cohort)
    spatial_dims = first.image.ndim - 1
    if network == "light_unet" and spatial_dims == 2:
        network = "unet"
    kw = {"network": network, "spatial_dims": spatial_dims, "in_channels": first.image.shape[0],
          "label_values": values, "head": "sigmoid" if len(values) == 2 else "softmax"}
    kw.update(overrides)
    return ModelConfig(**kw)


def _labelled(cohort: Cohort, ids: Sequence[str], what: str) -> list[str]:
    labels = cohort.cases.set_index("case_id").loc[list(ids), "label"]
    missing = [c for c, v in labels.items() if not (isinstance(v, str) and v)]
    if missing:
        raise InputDataError(cohort.source, f"{len(missing)} {what} case(s) have no label: {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}; label them or move them to the pool split")
    return list(ids)


def split_train_val(cohort: Cohort, group_attribute: str | None, *, val_fraction: float, seed: int,
                    train_ids: Sequence[str] | None = None, val_ids: Sequence[str] | None = None
                    ) -> tuple[list[str], list[str]]:
    """Training and validation case ids (see :class:`TrainConfig` ``val_fraction``)."""
    cases = cohort.cases
    if train_ids is None:
        train_ids = cases.loc[cases["split"] == "train", "case_id"].tolist()
        if val_ids is None and (cases["split"] == "val").any():
            val_ids = cases.loc[cases["split"] == "val", "case_id"].tolist()
    train_ids = list(train_ids)
    if not train_ids:
        raise InputDataError(cohort.source, "no training cases (split 'train' is empty)")
    if val_ids is None:
        val_ids = []
        synthetic = set(cohort.synthetic_ids)  # generated cases are never validated on
        real = [c for c in train_ids if c not in synthetic]
        if val_fraction > 0 and len(real) >= 4:
            rng = np.random.default_rng([seed, 7919])
            groups = (cohort.cases.set_index("case_id").loc[real, group_attribute].astype("string")
                      .fillna("unknown").to_numpy() if group_attribute else np.array(["all"] * len(real)))
            for g in sorted(set(groups)):
                members = [c for c, gg in zip(real, groups, strict=True) if gg == g]
                if len(members) > 1:  # at least one validation case per group that can spare one
                    k = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
                    val_ids += list(rng.choice(members, k, replace=False))
            train_ids = [c for c in train_ids if c not in set(val_ids)]
    return _labelled(cohort, train_ids, "training"), _labelled(cohort, list(val_ids), "validation")


def _write_log(path: Path | None, rows: list[dict]) -> None:
    if path is None:
        return
    write_csv_atomic(path, pd.DataFrame(rows))


def discrete_attributes(cohort: Cohort) -> pd.DataFrame:
    """The cohort's attributes made discrete over the whole cohort (indexed by case id).

    Binning over the whole cohort keeps training and validation subgroups identical.
    """
    cases = cohort.cases.set_index("case_id")
    return pd.DataFrame({a: bin_continuous(cases[a], name=a) for a in cohort.attributes}, index=cases.index)


def _check_fits(image: torch.Tensor, config: ModelConfig, source) -> None:
    """Refuse an image ``(B, C, *S)`` whose channels or dimensions the model cannot take."""
    if image.ndim - 2 != config.spatial_dims or image.shape[1] != config.in_channels:
        raise InputDataError(source, f"image shape {tuple(image.shape[1:])} does not fit the model "
                             f"({config.in_channels} channel(s), {config.spatial_dims}D)")


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (its metadata is not needed past the loader)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def _case_rows(predictor: Predictor, cohort: Cohort, ids: Sequence[str], pipeline: Pipeline, *, workers: int = 0,
               cache: str | None = None) -> Iterator[dict]:
    """Per-case validation Dice of ``ids``, one row at a time, cases streamed from the cache."""
    from . import data as streams

    cases = streams.preprocessed(cohort, ids, pipeline, cache=cache)
    for item in streams.loader(cases, keys=range(len(cases)), workers=workers):
        cid = item["case_id"]
        x = _plain(item["image"])[None]
        _check_fits(x, predictor.config, cid)
        pred = predictor.predict(x)["label"][0].cpu().numpy()
        m = overlap_metrics(pred[None], np.asarray(item["label"])[0][None], cohort.classes)
        dice = {k: float(v[0]) for k, v in m.items() if k.startswith("dice_")}
        yield {"case_id": cid, "dice": float(np.mean(list(dice.values()))), **dice}


def _val_table(rows: list[dict], cohort: Cohort, attributes: pd.DataFrame | None) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    if not len(table):
        return table
    attrs = (discrete_attributes(cohort) if attributes is None else attributes).loc[table["case_id"].tolist()]
    return table.merge(attrs.reset_index(), on="case_id", how="left")


def validate(predictor: Predictor, cohort: Cohort, ids: Sequence[str], attributes: pd.DataFrame | None = None, *,
             pipeline: Pipeline | None = None, workers: int = 0, cache: str | None = None) -> pd.DataFrame:
    """Per-case validation Dice (mean over the cohort's classes) with the (discrete) case attributes.

    Cases are read one at a time through ``pipeline`` (default: the predictor's, i.e. its
    checkpoint's) and its persistent cache (see
    :class:`TrainConfig` ``workers`` and ``cache``); the prediction is compared with the label
    on the pipeline's grid.
    """
    pipeline = pipeline or predictor.pipeline
    rows = list(_case_rows(predictor, cohort, ids, pipeline, workers=workers, cache=cache))
    return _val_table(rows, cohort, attributes)


# --------------------------------------------------------------------------- the job's stages
@dataclass
class _Run:
    """What :func:`_set_up` decided for a run; the stages read it and add their parts."""

    cohort: Cohort
    config: TrainConfig
    dist: Distributed
    model_config: ModelConfig
    pipeline: Pipeline
    group_attribute: str | None
    train_ids: list[str]
    val_ids: list[str]
    target_ids: list[str]
    loss: str
    objective: Objective
    attributes: pd.DataFrame
    init: Checkpoint | None
    train_state: dict | None
    start_epoch: int
    log_rows: list[dict]
    out: Path | None
    log_path: Path | None
    meta: dict = field(default_factory=dict)


@dataclass
class _Data:
    """The run's cases as datasets: nothing but items and a cache folder is held."""

    train: streams.TrainingSet
    target: streams.TrainingSet | None


@dataclass
class _Fit:
    """The network being trained (``ddp`` is its distributed wrapper, or itself), its optimizer."""

    model: nn.Module
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    predictor: Predictor


def _resume_state(resume, config: TrainConfig) -> tuple[Checkpoint, dict, int, list[dict]]:
    """The checkpoint, training state, first epoch and log rows of an interrupted run."""
    ckpt = load_checkpoint(resume, with_train_state=True)
    if ckpt.train_state is None:
        raise InputDataError(resume, "checkpoint has no training state to resume from")
    stored = TrainConfig(**json.loads(ckpt.meta.get("train_config", "{}")))
    if not stored.same_run_as(config):
        a, b = asdict(stored), asdict(config)
        changed = [f"{k} {a[k]!r} → {b[k]!r}" for k in a if a[k] != b[k] and k not in RESUME_MAY_CHANGE]
        raise InputDataError(resume, "resume needs the settings of the interrupted run (only epochs and device may "
                             f"change); changed: {', '.join(changed)}")
    return ckpt, ckpt.train_state, int(ckpt.train_state["epoch"]), json.loads(ckpt.meta.get("log", "[]"))


def objective_for(cohort: Cohort, config: TrainConfig, *, train_ids: Sequence[str] | None = None,
                  val_ids: Sequence[str] | None = None, discrete: pd.DataFrame | None = None
                  ) -> tuple[Objective, list[str], list[str]]:
    """The fairness objective of a run on ``cohort``, with its training and validation case ids
    (``discrete``: the cohort's :func:`discrete_attributes`, when the caller has them)."""
    group_attribute = config.group_attribute or default_group_attribute(cohort)
    if group_attribute is not None and group_attribute not in cohort.attributes:
        raise InputDataError(cohort.source, f"group attribute {group_attribute!r} is not an attribute of the "
                             f"cohort (it has {cohort.attributes})")
    tr_ids, va_ids = split_train_val(cohort, group_attribute, val_fraction=config.val_fraction, seed=config.seed,
                                     train_ids=train_ids, val_ids=val_ids)
    objective = make_objective(
        config.fairness, (discrete_attributes(cohort) if discrete is None else discrete).loc[tr_ids].reset_index(),
        group_attribute,
        attributes=config.attributes or tuple(cohort.attributes), alpha=config.alpha, min_support=config.min_support,
        eta=config.dro_eta, n_target=config.equal_scale_target, synthetic=cohort.synthetic_ids)
    return objective, tr_ids, va_ids


def _set_up(cohort: Cohort, model_config: ModelConfig | None, config: TrainConfig, dist: Distributed, *,
            out, log_path, train_ids, val_ids, init, resume) -> _Run:
    """Settle the run before any case is read: the model settings and pipeline (from the
    checkpoint when resuming or fine-tuning), the cases, the loss and the fairness objective."""
    train_state, start_epoch, log_rows = None, 0, []
    if resume is not None:
        init, train_state, start_epoch, log_rows = _resume_state(resume, config)
    elif init is not None and not isinstance(init, Checkpoint):
        init = load_checkpoint(init)
    if init is not None:
        check_compatible(init, cohort)
        model_config = init.config
    if model_config is None:
        model_config = model_config_for(cohort)
    if "uuds" in model_config.extra and not config.pseudo_label_split:
        raise FairSegError("an adapted model trains with target cases beside every batch (pseudo_label_split): "
                           "adapt its source model again with fairseg adapt, or fine-tune the source model")
    loss = config.resolved_loss(model_config.head)
    if loss == "bce" and model_config.head != "sigmoid":
        raise ValueError("loss 'bce' needs a sigmoid head; use 'dicece'")
    discrete = discrete_attributes(cohort)
    objective, tr_ids, va_ids = objective_for(cohort, config, train_ids=train_ids, val_ids=val_ids, discrete=discrete)
    group_attribute = objective.group_attribute
    objective.reduce = dist.all_reduce_sum  # GroupDRO's batch statistics over all ranks
    target_ids = []
    if config.pseudo_label_split:
        target_ids = cohort.cases.loc[cohort.cases["split"] == config.pseudo_label_split, "case_id"].tolist()
        if not target_ids:
            raise InputDataError(cohort.source, f"no cases in split {config.pseudo_label_split!r} for pseudo-labels")
    from .data import pipeline_for, pipeline_of

    if init is not None:
        pipeline = pipeline_of(init)
        if config.spacing is not None and pipeline.spacing != config.spacing:
            raise InputDataError(getattr(init, "path", None), "spacing applies to a new model: a fine-tuned or "
                                 f"resumed one keeps its checkpoint's ({pipeline.spacing} mm)")
    else:
        if config.spacing is not None and model_config.spatial_dims != 3:
            raise InputDataError(cohort.source, "spacing applies to 3D volumes; 2D images keep their pixel grid")
        spacing = {} if config.spacing is None else {"spacing": config.spacing}
        pipeline = pipeline_for(cohort, tr_ids, model_config=model_config, **spacing)
    out = Path(out) if out is not None else None
    log_path = Path(log_path) if log_path is not None else (out.with_name(out.stem + ".log.csv") if out else None)
    return _Run(cohort, config, dist, model_config, pipeline, group_attribute, tr_ids, va_ids, target_ids, loss,
                objective, discrete, init, train_state, start_epoch, log_rows, out, log_path)


def _load_data(run: _Run) -> Job[_Data]:
    """Preprocess every case this run reads into the persistent cache (each rank its share;
    cached cases are not read) and record the training cases' geometry in ``run.meta``."""
    from . import data as streams

    cfg, cohort, dist = run.config, run.cohort, run.dist
    val = [c for c in run.val_ids if c not in set(run.train_ids)]
    # (this rank's cases, labelled?, measure their geometry?): an adapted model is for the
    # target's images, so its record of what inputs to expect is the target's
    adapted = "uuds" in run.model_config.extra
    parts = [(dist.shard(run.train_ids), True, not adapted), (dist.shard(val), True, False),
             (dist.shard(run.target_ids), False, adapted)]
    total, done, summaries = sum(len(p[0]) for p in parts), 0, {}
    for ids, with_label, measure in parts:
        cases = streams.preprocessed(cohort, ids, run.pipeline, with_label=with_label, cache=cfg.cache)
        geometry = streams.summaries(cohort, ids, cache=cfg.cache) if measure else None
        for cid, summary in streams.warm(cases, geometry, workers=cfg.workers):
            summaries[cid] = summary
            done += 1
            yield Progress("load", done, total, cid)
    summaries = {c: s for part in dist.gather(summaries) for c, s in part.items() if s is not None}
    dist.barrier()  # every case is in the cache before any rank trains
    expected = run.target_ids if adapted else run.train_ids
    run.meta["training_geometry"] = training_geometry([summaries[c] for c in expected],
                                                      spacing_unit=spacing_unit(cohort))
    kw = {"augment": cfg.augment, "fg_prob": cfg.fg_crop_prob}
    target = None
    if run.target_ids:
        target = streams.TrainingSet(streams.preprocessed(cohort, run.target_ids, run.pipeline, with_label=False,
                                                          cache=cfg.cache), run.model_config, with_label=False, **kw)
    train = streams.preprocessed(cohort, run.train_ids, run.pipeline, cache=cfg.cache)
    return _Data(streams.TrainingSet(train, run.model_config, **kw), target)


def _build_model(run: _Run) -> _Fit:
    """The network (seeded, or the checkpoint's weights), wrapped for DDP, and its optimizer
    (with its state when resuming)."""
    cfg, device = run.config, run.dist.device
    torch.manual_seed(cfg.seed)
    model = run.init.build(device) if run.init is not None else build_network(run.model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if run.train_state is not None:
        optimizer.load_state_dict(run.train_state["optimizer"])
        run.objective.load_state_dict(run.train_state.get("objective", {}))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp)
    predictor = Predictor(model, run.model_config, InferenceConfig(device=str(device), amp=cfg.amp,
                                                                   uncertainty="none"))
    return _Fit(model, run.dist.wrap(model), optimizer, scaler, predictor)


def _start_translation(run: _Run, data: _Data, fit: _Fit, n: int = 8, voxels: int = 2 ** 22) -> None:
    """A new adapted model's translation starts as is or inverted per channel
    (:func:`.adaptation.start_polarity`, on up to ``n`` prepared cases of each cohort, every
    k-th voxel so that at most ``voxels`` per channel are sorted); the choice is recorded in the
    checkpoint's ``meta["uuds_start"]``."""
    def sample(cases):
        idx = np.unique(np.linspace(0, len(cases) - 1, min(n, len(cases))).round().astype(int))
        values = torch.cat([torch.as_tensor(_plain(cases[int(i)]["image"])).float().flatten(1) for i in idx], dim=1)
        return values[:, ::max(1, values.shape[1] // voxels)][None]

    gain, offset, record = start_polarity(sample(data.train.cases), sample(data.target.cases),
                                          polarity=run.config.uuds_polarity)
    fit.model.start_translation(gain, offset)
    run.meta["uuds_start"] = {"gain": gain, "offset": [round(b, 4) for b in offset], "distribution_loss": record}


def _epoch_batches(run: _Run, epoch: int) -> tuple[list[list], list[list]]:
    """This rank's training batches of ``epoch`` and the pseudo-label batches beside them, as
    :data:`.data.Key` lists drawn from ``(seed, epoch)``."""
    from .data import epoch_keys

    rng = np.random.default_rng([run.config.seed, epoch])
    index = {c: i for i, c in enumerate(run.train_ids)}
    plan = [(index[c], synthetic) for c, synthetic in run.objective.epoch_plan(rng)]
    keys = run.dist.share(epoch_keys(plan, rng))
    bs = run.config.batch_size
    batches = [keys[i:i + bs] for i in range(0, len(keys), bs)]
    targets, n = [], len(run.target_ids)
    rank_rng = np.random.default_rng([run.config.seed, epoch, run.dist.rank])  # each rank its own targets
    for batch in batches if n else []:
        picks = rank_rng.choice(n, min(len(batch), n), replace=False)
        targets.append(epoch_keys([(int(j), False) for j in picks], rank_rng))
    return batches, targets


def _step_loss(run: _Run, fit: _Fit, batch: dict, target_batch: dict | None) -> tuple[torch.Tensor, dict]:
    """The objective's loss of one batch (plus the pseudo-label term, or an adapted model's
    terms) and the extra terms to log (``{name: value}``)."""
    from .data import pad_batch

    cfg, mc, device = run.config, run.model_config, run.dist.device
    ids = list(batch["case_id"])
    x = _plain(batch["image"])
    _check_fits(x, mc, ids[0])
    x, y = pad_batch(x, mc), pad_batch(_plain(batch["target"]), mc)
    y = y.float() if mc.head == "sigmoid" else y[:, 0].long()
    if "uuds" in mc.extra:
        return _uuds_step_loss(run, fit, ids, x, y, target_batch)
    xs = [x] if target_batch is None else [x, pad_batch(_plain(target_batch["image"]), mc)]
    if len(xs) == 2 and xs[0].shape[2:] == xs[1].shape[2:]:
        xs = [torch.cat(xs)]  # one forward pass: DDP allows one per backward
    with autocast(device, cfg.amp):
        logits = torch.cat([fit.ddp(t.to(device)) for t in xs])
    loss = run.objective.combine(per_case_loss(logits[:len(ids)], y.to(device), loss=run.loss, head=mc.head), ids)
    if target_batch is None:
        return loss, {}
    chi = cfg.chi if cfg.uncertainty_mask else float("inf")
    pl, _kept = pseudo_label_loss(logits[len(ids):], head=mc.head, chi=chi)
    return loss + cfg.pseudo_weight * pl.mean(), {"pseudo_loss": float(pl.detach().mean())}


def _uuds_step_loss(run: _Run, fit: _Fit, ids: list[str], x: torch.Tensor, y: torch.Tensor,
                    target_batch: dict | None) -> tuple[torch.Tensor, dict]:
    """Seed 002's total loss of one source batch and the target batch beside it (see
    :mod:`.adaptation`); the fairness objective weighs the supervised source term."""
    from .data import pad_batch

    cfg, mc, device = run.config, run.model_config, run.dist.device
    if target_batch is None:
        raise FairSegError("an adapted model trains with target cases beside every batch (pseudo_label_split)")
    xt = pad_batch(_plain(target_batch["image"]), mc)
    _check_fits(xt, mc, list(target_batch["case_id"])[0])
    with autocast(device, cfg.amp):
        out = fit.ddp(x.to(device), target=xt.to(device))
    y = y.to(device)
    supervised = run.objective.combine(per_case_loss(out["source_logits"], y, loss=run.loss, head=mc.head), ids)
    chi = cfg.chi if cfg.uncertainty_mask else float("inf")
    pseudo, _kept = pseudo_label_loss(out["target_logits"], head=mc.head, chi=chi)
    zero = supervised.new_zeros(())
    dd_s = dd_ts = dm = contrast = zero
    if cfg.uuds_translation == "match":  # L_DM in Eq. 2's place (see TrainConfig.uuds_translation)
        dm = distribution_loss(out["translated"].float(), x.to(device).float())
    if out["prompt"] is not None:
        n = min(len(out["g_source"]), len(out["g_target"]))
        g_t = out["g_target"][:n].float()
        dd_s = domain_distillation_loss(out["g_source"][:n].float(), g_t, out["prompt"].float(), tau=cfg.tau)
        if cfg.uuds_translation == "prompt":
            # Eq. 2 moves the translation towards the prompt; the prompt and the target's
            # features are Eq. 1's to learn (see models/uuds.py)
            dd_ts = domain_distillation_loss(out["g_translated"][:n].float(), g_t.detach(),
                                             out["prompt"].detach().float(), tau=cfg.tau)
    if out["z"] is not None:
        has_object = (y.flatten(1) > 0).any(dim=1).long()
        contrast = batch_contrastive_loss(out["z"].float(), has_object, tau=cfg.tau)
    identity = identity_loss(out["reconstruction"].float(), x.to(device).float())
    a, b, g, lam = cfg.uuds_weights
    total = uuds_loss(dd_source=dd_s, dd_translated=dd_ts + dm, contrast=contrast, pseudo=pseudo.mean(),
                      supervised=supervised, identity=identity, alpha=a, beta=b, gamma=g, lam=lam)
    terms = {"supervised_loss": supervised, "pseudo_loss": pseudo.mean(), "dd_loss": dd_s + dd_ts, "dm_loss": dm,
             "contrast_loss": contrast, "identity_loss": identity}
    return total, {k: float(v.detach()) for k, v in terms.items()}


def _train_epoch(run: _Run, data: _Data, fit: _Fit, epoch: int) -> Job[tuple[dict, list[str]]]:
    """One epoch over this rank's share of the objective's plan; yields after every step and
    returns the log row so far and the case ids fed, in order."""
    from .data import loader

    cfg = run.config
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    batches, targets = _epoch_batches(run, epoch)
    seed = cfg.seed * 100_003 + epoch
    steps = loader(data.train, batches=batches, workers=cfg.workers, seed=seed)
    beside = (loader(data.target, batches=targets, workers=cfg.workers, seed=seed + 1)
              if targets else [None] * len(batches))
    fit.ddp.train()
    losses, terms, fed = [], {}, []
    for s, (batch, target_batch) in enumerate(zip(steps, beside, strict=True)):
        loss, extra = _step_loss(run, fit, batch, target_batch)
        if not torch.isfinite(loss):
            raise FairSegError(f"training loss became {float(loss)} at epoch {epoch + 1}, step {s + 1}; "
                               f"the last completed epoch's checkpoint {run.out} is intact. Check the images "
                               "for extreme values or lower the learning rate (--lr)")
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
        losses.append(float(loss.detach()))
        fed += list(batch["case_id"])
        for k, v in extra.items():
            terms.setdefault(k, []).append(v)
        yield Progress("train", s + 1, len(batches), f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}")
    row = {"epoch": epoch + 1, "train_loss": float(np.mean(run.dist.gather(float(np.mean(losses))))), "seconds": 0.0}
    for k, values in terms.items():
        row[k] = float(np.mean(run.dist.gather(float(np.mean(values)))))
    return row, fed


def _validate_epoch(run: _Run, fit: _Fit) -> Job[dict]:
    """Validation Dice, per group, over every rank's cases (each rank predicts its shard and
    the per-case rows are gathered), then the objective's update from them; returns log entries."""
    if not run.val_ids:
        return {}
    cfg = run.config
    fit.model.eval()
    mine = run.dist.shard(run.val_ids)
    rows = []
    # an adapted model validates on the source's cases: without the target's pre-map (an inversion)
    source_view = getattr(fit.model, "on_source_images", nullcontext)
    with source_view():
        for row in _case_rows(fit.predictor, run.cohort, mine, run.pipeline, workers=cfg.workers, cache=cfg.cache):
            rows.append(row)
            yield Progress("validate", len(rows), len(mine), row["case_id"])
    order = {c: i for i, c in enumerate(run.val_ids)}
    rows = sorted((r for part in run.dist.gather(rows) for r in part), key=lambda r: order[r["case_id"]])
    val = _val_table(rows, run.cohort, run.attributes)
    out = {"val_dice": float(val["dice"].mean())}
    if run.group_attribute:
        for g, v in val.groupby(val[run.group_attribute].astype("string").fillna("unknown"))["dice"]:
            out[f"val_dice[{g}]"] = float(v.mean())
    out.update(run.objective.after_validation(val, "dice"))
    yield Progress("validate", len(mine), len(mine), f"val Dice {out['val_dice']:.4f}")
    return out


def _checkpoint(run: _Run, fit: _Fit, row: dict) -> Job[None]:
    """Log the epoch and (rank 0) write the checkpoint and the log, both atomically."""
    run.log_rows.append(row)
    run.meta.update(epoch=row["epoch"], val_dice=row.get("val_dice"), log=json.dumps(run.log_rows))
    if run.dist.is_main:
        if run.out is not None:
            save_checkpoint(run.out, fit.model, run.model_config, run.meta, train_state={
                "optimizer": fit.optimizer.state_dict(), "epoch": row["epoch"],
                "objective": run.objective.state_dict()})
        _write_log(run.log_path, run.log_rows)
    msg = f"loss {row['train_loss']:.4f}" + (f" val Dice {row['val_dice']:.4f}" if "val_dice" in row else "")
    yield Progress("epoch", row["epoch"], run.config.epochs, msg)


# --------------------------------------------------------------------------- the job
def train_job(cohort: Cohort, model_config: ModelConfig | None = None, config: TrainConfig = TrainConfig(), *,
              out: str | Path | None = None, log_path: str | Path | None = None,
              train_ids: Sequence[str] | None = None, val_ids: Sequence[str] | None = None,
              init: Checkpoint | str | Path | None = None, resume: str | Path | None = None) -> Job[TrainResult]:
    """Train a segmentation network on ``cohort``; yields progress per case loaded, step, validation and epoch.

    Under ``torchrun`` every process runs this job on its share of the cases
    (:mod:`.distributed`); only rank 0 writes ``out`` and the log.

    Parameters
    ----------
    model_config : ModelConfig, optional
        Network to train (default: :func:`model_config_for` the cohort); taken from the
        checkpoint when ``init`` or ``resume`` is given.
    out : path, optional
        Checkpoint written after every epoch (atomically); the log goes to ``log_path``
        (default ``<out stem>.log.csv``).
    train_ids, val_ids : sequence of str, optional
        Explicit cases (active learning); default from the cohort's splits.
    init : Checkpoint or path, optional
        Fine-tune from these weights (fresh optimizer, epoch 0).
    resume : path, optional
        Continue an interrupted run from its checkpoint, up to ``config.epochs``.
    """
    t_start = time.perf_counter()
    with session(config.device) as dist:
        run = _set_up(cohort, model_config, config, dist, out=out, log_path=log_path, train_ids=train_ids,
                      val_ids=val_ids, init=init, resume=resume)
        data = yield from _load_data(run)
        fit = _build_model(run)
        if "uuds" in run.model_config.extra:
            if run.init is not None and "uuds_start" in run.init.meta:
                # resumed or fine-tuned: the start is in the weights already; keep its record
                run.meta["uuds_start"] = run.init.meta["uuds_start"]
            elif data.target is not None:  # a new adaptation (without target cases the step refuses)
                _start_translation(run, data, fit)
        run.meta.update({"classes": cohort.classes, "cohort": cohort.name, "attributes": cohort.attributes,
                         "group_attribute": run.group_attribute, "device": describe(dist.device), "loss": run.loss,
                         "train_config": json.dumps(asdict(config)), "n_train": len(run.train_ids),
                         "n_val": len(run.val_ids), "val_ids": list(run.val_ids), "pipeline": run.pipeline.to_json(),
                         "world_size": dist.world_size})
        fed = []
        for epoch in range(run.start_epoch, config.epochs):
            t_epoch = time.perf_counter()
            row, ids = yield from _train_epoch(run, data, fit, epoch)
            row.update((yield from _validate_epoch(run, fit)))
            row["seconds"] = round(time.perf_counter() - t_epoch, 3)
            yield from _checkpoint(run, fit, row)
            fed.append(ids)
        fit.model.eval()
        run.meta["seconds"] = round(time.perf_counter() - t_start, 2)
        return TrainResult(fit.model, run.model_config, pd.DataFrame(run.log_rows), run.out, run.meta, fed)


def record_training_geometry(src: str | Path, dst: str | Path, cohort: Cohort, *, meta: dict | None = None) -> Path:
    """Export checkpoint ``src`` to ``dst`` with its training-geometry record, without retraining.

    For checkpoints trained before :func:`train_job` recorded the geometry (the bundled ones):
    the run's training cases are found again from the settings the checkpoint stores (split,
    seed, validation fraction, group attribute) and measured on ``cohort``, which must be the
    cohort it was trained on. A record already present is kept. The weights are written back
    unchanged; ``meta`` entries (a ``display_name``, a ``description``) are added.
    """
    ckpt = load_checkpoint(src)
    extra = dict(meta or {})
    if "training_geometry" not in ckpt.meta:
        stored = TrainConfig(**json.loads(ckpt.meta.get("train_config", "{}")))
        group = ckpt.meta.get("group_attribute")
        tr_ids, va_ids = split_train_val(cohort, group, val_fraction=stored.val_fraction, seed=stored.seed)
        if (len(tr_ids), len(va_ids)) != (ckpt.meta.get("n_train"), ckpt.meta.get("n_val")):
            raise InputDataError(src, f"cohort {cohort.name!r} gives {len(tr_ids)} training / {len(va_ids)} "
                                 f"validation cases but the checkpoint was trained on {ckpt.meta.get('n_train')} / "
                                 f"{ckpt.meta.get('n_val')}: it is not the cohort this model was trained on")
        extra["training_geometry"] = cohort_geometry(cohort, tr_ids)
    return export_checkpoint(src, dst, meta=extra)
