"""The trainer: a generator of progress events that trains, validates per group and checkpoints.

``train_job`` is seeded (same seed, same weights on the same device), resumable (each epoch's
checkpoint holds the optimizer and objective state; epoch ``e`` draws its batches from
``(seed, e)``, so a resumed run equals an uninterrupted one), cancellable between steps (the
last completed epoch's checkpoint and log stay intact: both are written atomically), and able
to fine-tune from a checkpoint on a grown labelled set (active learning).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.arrays import load_case, load_image
from ..data.atomic import write_csv_atomic
from ..data.attributes import bin_continuous
from ..data.manifest import Cohort
from ..errors import FairSegError, InputDataError
from ..inference.device import autocast, choose_device, describe
from ..inference.domain import case_summary, cohort_geometry, spacing_unit, training_geometry
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
from ..models.networks import ModelConfig, build_network, pad_to_divisible, size_divisor
from ..models.preprocess import label_to_target, normalise_intensity
from ..options import TRAIN
from ..progress import Job, Progress
from .losses import LOSSES, per_case_loss, pseudo_label_loss
from .objectives import OBJECTIVES, Objective, make_objective

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
        object.__setattr__(self, "attributes", tuple(self.attributes))

    def resolved_loss(self, head: str) -> str:
        return ("bce" if head == "sigmoid" else "dicece") if self.loss == "auto" else self.loss

    def same_run_as(self, other: TrainConfig) -> bool:
        """Whether two configs describe the same run, up to the number of epochs and the device."""
        a, b = asdict(self), asdict(other)
        for k in ("epochs", "device", "amp"):
            a.pop(k), b.pop(k)
        return a == b


@dataclass
class TrainResult:
    """What :func:`train_job` returns: the trained model (eval mode), its config and the log."""

    model: nn.Module
    config: ModelConfig
    log: pd.DataFrame
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)


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
        if val_fraction > 0 and len(train_ids) >= 4:
            rng = np.random.default_rng([seed, 7919])
            groups = (cohort.cases.set_index("case_id").loc[train_ids, group_attribute].astype("string")
                      .fillna("unknown").to_numpy() if group_attribute else np.array(["all"] * len(train_ids)))
            for g in sorted(set(groups)):
                members = [c for c, gg in zip(train_ids, groups, strict=True) if gg == g]
                if len(members) > 1:  # at least one validation case per group that can spare one
                    k = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
                    val_ids += list(rng.choice(members, k, replace=False))
            train_ids = [c for c in train_ids if c not in set(val_ids)]
    return _labelled(cohort, train_ids, "training"), _labelled(cohort, list(val_ids), "validation")


class CaseCache:
    """Decoded, normalised cases (images, class maps and targets) held in memory, by case id.

    ``summary`` keeps each case's raw geometry and intensity statistics
    (:func:`~napari_fairseg.inference.domain.case_summary`) for the checkpoint's training record.
    """

    def __init__(self, cohort: Cohort, config: ModelConfig):
        self.cohort, self.config = cohort, config
        self.image: dict[str, np.ndarray] = {}
        self.target: dict[str, np.ndarray] = {}
        self.label: dict[str, np.ndarray] = {}
        self.summary: dict[str, dict] = {}

    def load(self, cid: str, *, with_label: bool = True) -> None:
        case = load_case(self.cohort, cid) if with_label else load_image(self.cohort, cid)
        if case.image.ndim - 1 != self.config.spatial_dims or case.image.shape[0] != self.config.in_channels:
            raise InputDataError(cid, f"image shape {case.image.shape} does not fit the model "
                                 f"({self.config.in_channels} channel(s), {self.config.spatial_dims}D)")
        self.summary[cid] = case_summary(case.image, case.spacing)
        self.image[cid] = normalise_intensity(case.image, self.config.intensity, source=cid)
        if with_label:
            self.label[cid] = case.label
            self.target[cid] = label_to_target(case.label, self.config, source=cid)


def _crop(image, target, patch, rng, fg_prob):
    spatial = image.shape[1:]
    if patch is None or all(s <= p for s, p in zip(spatial, patch, strict=True)):
        return image, target
    fg = None
    if target is not None and rng.random() < fg_prob:
        t = target[0] if target.ndim == image.ndim else target
        idx = np.flatnonzero(t)
        if idx.size:
            fg = np.unravel_index(idx[rng.integers(idx.size)], spatial)
    starts = []
    for d, (s, p) in enumerate(zip(spatial, patch, strict=True)):
        if s <= p:
            starts.append(0)
        elif fg is not None:
            starts.append(int(np.clip(fg[d] - p // 2, 0, s - p)))
        else:
            starts.append(int(rng.integers(0, s - p + 1)))
    sl = tuple(slice(st, st + p) for st, p in zip(starts, patch, strict=True))
    img = image[(slice(None), *sl)]
    if target is None:
        return img, None
    return img, target[(slice(None), *sl)] if target.ndim == image.ndim else target[sl]


def _collate(arrays: list[np.ndarray], divisor: int, minimum, *, lead: int) -> torch.Tensor:
    """Stack arrays ``(C, *S)`` (``lead=1``) or ``(*S)`` (``lead=0``) whose sizes may differ.

    Each is zero-padded at the end to the largest size, then the batch is padded to the
    network's divisor (and ``minimum``) by :func:`pad_to_divisible`.
    """
    spatial = np.max([a.shape[lead:] for a in arrays], axis=0)
    batch = torch.from_numpy(np.stack([
        np.pad(a, [(0, 0)] * lead + [(0, int(s) - n) for s, n in zip(spatial, a.shape[lead:], strict=True)])
        for a in arrays]))
    if lead == 0:
        return pad_to_divisible(batch[:, None], divisor, minimum=minimum)[0][:, 0]
    return pad_to_divisible(batch, divisor, minimum=minimum)[0]


def _synthetic(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Intensity augmentation of an equal-scale extra copy (contrast, shift, noise)."""
    return (image * rng.uniform(0.85, 1.15) + rng.normal(0, 0.1)
            + rng.normal(0, 0.05, image.shape)).astype(np.float32)


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


def validate(predictor: Predictor, data: CaseCache, cohort: Cohort, ids: Sequence[str],
             attributes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-case validation Dice (mean over the cohort's classes) with the (discrete) case attributes."""
    rows = []
    for cid in ids:
        x = torch.from_numpy(data.image[cid])[None]
        pred = predictor.predict(x)["label"][0].cpu().numpy()
        m = overlap_metrics(pred[None], data.label[cid][None], cohort.classes)
        dice = {k: float(v[0]) for k, v in m.items() if k.startswith("dice_")}
        rows.append({"case_id": cid, "dice": float(np.mean(list(dice.values()))), **dice})
    table = pd.DataFrame(rows)
    attrs = (discrete_attributes(cohort) if attributes is None else attributes).loc[list(ids)]
    return table.merge(attrs.reset_index(), on="case_id", how="left") if len(table) else table


# --------------------------------------------------------------------------- the job
def train_job(cohort: Cohort, model_config: ModelConfig | None = None, config: TrainConfig = TrainConfig(), *,
              out: str | Path | None = None, log_path: str | Path | None = None,
              train_ids: Sequence[str] | None = None, val_ids: Sequence[str] | None = None,
              init: Checkpoint | str | Path | None = None, resume: str | Path | None = None) -> Job[TrainResult]:
    """Train a segmentation network on ``cohort``; yields progress per step, validation and epoch.

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
    device = choose_device(config.device)
    start_epoch, train_state, log_rows = 0, None, []
    if resume is not None:
        ckpt = load_checkpoint(resume, with_train_state=True)
        if ckpt.train_state is None:
            raise InputDataError(resume, "checkpoint has no training state to resume from")
        stored = TrainConfig(**json.loads(ckpt.meta.get("train_config", "{}")))
        if not stored.same_run_as(config):
            raise InputDataError(resume, "resume needs the settings of the interrupted run (only epochs and "
                                 "device may change)")
        model_config, train_state = ckpt.config, ckpt.train_state
        start_epoch = int(train_state["epoch"])
        log_rows = json.loads(ckpt.meta.get("log", "[]"))
        init = ckpt
    elif init is not None and not isinstance(init, Checkpoint):
        init = load_checkpoint(init)
    if init is not None:
        check_compatible(init, cohort)
        model_config = init.config
    if model_config is None:
        model_config = model_config_for(cohort)
    group_attribute = config.group_attribute or default_group_attribute(cohort)
    if group_attribute is not None and group_attribute not in cohort.attributes:
        raise InputDataError(cohort.source, f"group attribute {group_attribute!r} is not an attribute of the "
                             f"cohort (it has {cohort.attributes})")
    tr_ids, va_ids = split_train_val(cohort, group_attribute, val_fraction=config.val_fraction, seed=config.seed,
                                     train_ids=train_ids, val_ids=val_ids)
    loss_name = config.resolved_loss(model_config.head)
    if loss_name == "bce" and model_config.head != "sigmoid":
        raise ValueError("loss 'bce' needs a sigmoid head; use 'dicece'")
    discrete = discrete_attributes(cohort)
    train_table = discrete.loc[tr_ids].reset_index()
    objective: Objective = make_objective(
        config.fairness, train_table, group_attribute, attributes=config.attributes or tuple(cohort.attributes),
        alpha=config.alpha, min_support=config.min_support, eta=config.dro_eta, n_target=config.equal_scale_target)
    target_ids = []
    if config.pseudo_label_split:
        target_ids = cohort.cases.loc[cohort.cases["split"] == config.pseudo_label_split, "case_id"].tolist()
        if not target_ids:
            raise InputDataError(cohort.source, f"no cases in split {config.pseudo_label_split!r} for pseudo-labels")

    # ---- data
    data = CaseCache(cohort, model_config)
    everything = [(c, True) for c in dict.fromkeys(tr_ids + va_ids)] + [(c, False) for c in target_ids]
    for i, (cid, with_label) in enumerate(everything):
        data.load(cid, with_label=with_label)
        yield Progress("load", i + 1, len(everything), cid)

    # ---- model and optimizer
    torch.manual_seed(config.seed)
    model = init.build(device) if init is not None else build_network(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        objective.load_state_dict(train_state.get("objective", {}))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and config.amp)
    predictor = Predictor(model, model_config, InferenceConfig(device=str(device), amp=config.amp,
                                                               uncertainty="none"))
    divisor, patch = size_divisor(model_config), model_config.patch_size
    out = Path(out) if out is not None else None
    log_path = Path(log_path) if log_path is not None else (out.with_name(out.stem + ".log.csv") if out else None)
    meta = {"classes": cohort.classes, "cohort": cohort.name, "attributes": cohort.attributes,
            "group_attribute": group_attribute, "device": describe(device), "loss": loss_name,
            "train_config": json.dumps(asdict(config)), "n_train": len(tr_ids), "n_val": len(va_ids),
            "training_geometry": training_geometry([data.summary[c] for c in tr_ids],
                                                   spacing_unit=spacing_unit(cohort))}

    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        plan = objective.epoch_plan(rng)
        steps = [plan[i:i + config.batch_size] for i in range(0, len(plan), config.batch_size)]
        model.train()
        losses, pl_losses = [], []
        for s, batch in enumerate(steps):
            ids = [c for c, _ in batch]
            pairs = []
            for cid, synthetic in batch:
                img = _synthetic(data.image[cid], rng) if synthetic else data.image[cid]
                pairs.append(_crop(img, data.target[cid], patch, rng, config.fg_crop_prob))
            x = _collate([p[0] for p in pairs], divisor, patch, lead=1).to(device)
            y = _collate([p[1] for p in pairs], divisor, patch, lead=1 if model_config.head == "sigmoid" else 0)
            y = y.to(device)
            with autocast(device, config.amp):
                logits = model(x)
            loss = objective.combine(per_case_loss(logits, y, loss=loss_name, head=model_config.head), ids)
            if target_ids:
                tid = [target_ids[j] for j in rng.choice(len(target_ids), min(len(ids), len(target_ids)),
                                                         replace=False)]
                xt = _collate([_crop(data.image[c], None, patch, rng, 0)[0] for c in tid], divisor, patch, lead=1)
                with autocast(device, config.amp):
                    lt = model(xt.to(device))
                pl, _kept = pseudo_label_loss(lt, head=model_config.head, chi=config.chi)
                loss = loss + config.pseudo_weight * pl.mean()
                pl_losses.append(float(pl.detach().mean()))
            if not torch.isfinite(loss):
                raise FairSegError(f"training loss became {float(loss)} at epoch {epoch + 1}, step {s + 1}; "
                                   f"the last completed epoch's checkpoint {out} is intact. Check the images "
                                   "for extreme values or lower the learning rate (--lr)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            yield Progress("train", s + 1, len(steps), f"epoch {epoch + 1}/{config.epochs} loss {losses[-1]:.4f}")

        # ---- validation
        model.eval()
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "seconds": 0.0}
        if pl_losses:
            row["pseudo_loss"] = float(np.mean(pl_losses))
        if va_ids:
            val = validate(predictor, data, cohort, va_ids, discrete)
            row["val_dice"] = float(val["dice"].mean())
            if group_attribute:
                for g, v in val.groupby(val[group_attribute].astype("string").fillna("unknown"))["dice"]:
                    row[f"val_dice[{g}]"] = float(v.mean())
            row.update(objective.after_validation(val, "dice"))
            yield Progress("validate", len(va_ids), len(va_ids), f"val Dice {row['val_dice']:.4f}")
        row["seconds"] = round(time.perf_counter() - t_epoch, 3)
        log_rows.append(row)
        meta.update(epoch=epoch + 1, val_dice=row.get("val_dice"), log=json.dumps(log_rows))
        if out is not None:
            save_checkpoint(out, model, model_config, meta, train_state={
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "objective": objective.state_dict()})
        _write_log(log_path, log_rows)
        msg = f"loss {row['train_loss']:.4f}" + (f" val Dice {row['val_dice']:.4f}" if "val_dice" in row else "")
        yield Progress("epoch", epoch + 1, config.epochs, msg)

    model.eval()
    meta["seconds"] = round(time.perf_counter() - t_start, 2)
    return TrainResult(model, model_config, pd.DataFrame(log_rows), out, meta)


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
