"""The active-learning round: fine-tune → evaluate → score the pool → suggest a batch.

One headless job, :func:`round_job`, shared by the GUI, ``fairseg suggest`` and
``fairseg simulate``. A round works on a :class:`~.project.Project`:

* the **labelled set** is every case of the pool split (``train`` by default) that has an
  annotation in the project (its latest version);
* the **pool** is every other case of that split;
* the **held-out set** is the evaluation split (``test``), labelled by project annotations or,
  failing that, by the cohort's own labels.

A round trains only when it has to: when the labelled set changed since the latest round's model
(or ``train=True``). It warm-starts from the previous round's model (``warm_start``, the
default, cheap) or retrains from scratch (the paper's protocol). It then measures Dice,
per-group Dice, Δ and ESSP on the held-out set, the labelled set's per-group Dice (the weights
of WLE), scores the pool as the strategy needs, and stores the round, its metrics and its ranked
suggestions in the project in one transaction. Annotating the suggestions
(:meth:`~.project.Project.save_annotation`) and running the next round closes the loop.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.manifest import Cohort
from ..data.pipeline import pipeline_of
from ..errors import InputDataError
from ..inference.device import choose_device
from ..inference.predict import InferenceConfig, Predictor, predict_pool_job
from ..metrics.groups import equity_summary
from ..models.checkpoint import Checkpoint, check_compatible, load_checkpoint
from ..models.zoo import resolve_checkpoint
from ..options import ROUND
from ..progress import Job, Progress
from ..training import (
    TrainConfig,
    TrainResult,
    default_group_attribute,
    model_config_for,
    train_job,
    validate,
)
from .embeddings import embeddings_job
from .project import Project, utc_now
from .strategies import Context, make_strategy


@dataclass(frozen=True)
class RoundConfig:
    """Settings of one active-learning round.

    Attributes
    ----------
    strategy : str
        One of :data:`~.strategies.STRATEGIES`.
    batch : int
        Cases to suggest.
    epochs : int
        Fine-tuning epochs when warm-starting from the previous round's model.
    first_epochs : int
        Epochs when training from scratch (no previous model, or ``warm_start=False``).
    lr, train_batch, loss : float, int, str
        Adam learning rate, training batch size and loss (``dicece`` or seed 001's ``bce``).
    network, dropout : str, float
        Network trained from scratch (dropout > 0 keeps MC-dropout strategies possible).
    warm_start : bool
        Fine-tune the previous round's model (default) or retrain from scratch each round.
    pool_split, eval_split : str
        Split holding the labelled set and the pool; held-out evaluation split.
    group_attribute : str or None
        Sensitive attribute of WLE, the quotas and the per-group metrics (default: the first of
        ``group``, ``race``, ``sex``, ``gender``).
    roi_radius, mc_passes : int
        ROI dilation (voxels) of the masked scaled entropy; MC-dropout passes (``epistemic``).
    encoder : str
        Embedding source of the fair-quota strategies: ``encoder`` (this round's network) or a
        FairSeg checkpoint file whose network's bottleneck features are used.
    n_candidates, lam : int, float
        Random batches tried by ``stochastic``; representativeness weight of ``fair-ap``.
    seed : int
        Seeds training (with the round number) and the random strategies.
    device, amp, inference_batch : str, bool, int
        Where and how the network runs.
    """

    strategy: str = ROUND["strategy"]
    batch: int = ROUND["batch"]
    epochs: int = ROUND["epochs"]
    first_epochs: int = ROUND["first_epochs"]
    lr: float = ROUND["lr"]
    train_batch: int = ROUND["train_batch"]
    loss: str = ROUND["loss"]
    network: str = ROUND["network"]
    dropout: float = ROUND["dropout"]
    warm_start: bool = ROUND["warm_start"]
    pool_split: str = ROUND["pool_split"]
    eval_split: str = ROUND["eval_split"]
    group_attribute: str | None = None
    roi_radius: int = ROUND["roi_radius"]
    mc_passes: int = ROUND["mc_passes"]
    encoder: str = ROUND["encoder"]
    n_candidates: int = ROUND["n_candidates"]
    lam: float = ROUND["lam"]
    seed: int = ROUND["seed"]
    device: str = ROUND["device"]
    amp: bool = ROUND["amp"]
    inference_batch: int = ROUND["inference_batch"]

    def __post_init__(self):
        make_strategy(self.strategy)  # validates the name
        if self.batch < 1 or self.epochs < 1 or self.first_epochs < 1:
            raise ValueError("batch, epochs and first_epochs must be >= 1")


@dataclass
class RoundResult:
    """What a round produced.

    Attributes
    ----------
    round_id : int
    metrics : dict
        Flat scalars: ``n_labelled``, ``n_labelled[g]``, ``ratio[g]`` (share of the labelled set
        per group), held-out ``dice``, ``dice[g]``, ``delta``, ``essp``, ``worst_group``,
        ``n_eval``, labelled-set ``labelled_dice[g]``, ``trained``, seconds per stage.
    suggestions : pandas.DataFrame
        Ranked batch: ``case_id``, ``score``, ``group``, ``group_weight`` (empty without suggest).
    pool : pandas.DataFrame
        Every pool case with its scores.
    evaluation : pandas.DataFrame
        Per-case held-out Dice with the group.
    checkpoint : pathlib.Path
        The round's model.
    """

    round_id: int
    metrics: dict
    suggestions: pd.DataFrame
    pool: pd.DataFrame
    evaluation: pd.DataFrame
    checkpoint: Path
    labelled_dice: pd.DataFrame = field(default_factory=pd.DataFrame)


def case_groups(cohort: Cohort, attribute: str | None, ids) -> pd.Series:
    """Group label (string, missing → ``unknown``) of ``ids``."""
    if attribute is None:
        return pd.Series("all", index=list(ids), dtype=object)
    col = cohort.cases.set_index("case_id").loc[list(ids), attribute]
    return col.astype("string").fillna("unknown").astype(object)


def labelled_key(latest: pd.DataFrame) -> str:
    """A fingerprint of a labelled set: its cases and their latest versions."""
    pairs = sorted(zip(latest["case_id"], latest["version"].astype(int), strict=True))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def _per_case_dice(predictor: Predictor, cohort: Cohort, ids, attribute: str | None) -> pd.DataFrame:
    """Per-case Dice of ``ids`` (labels from ``cohort``) with each case's ``group``."""
    if not ids:
        return pd.DataFrame(columns=["case_id", "dice", "group"])
    table = validate(predictor, cohort, ids)[["case_id", "dice"]]
    table["group"] = case_groups(cohort, attribute, ids).to_numpy()
    return table


def _summary(table: pd.DataFrame) -> dict:
    """Overall Dice, per-group Dice, Δ and ESSP of a per-case table (NaN when empty)."""
    if table.empty:
        return {"dice": np.nan, "delta": np.nan, "essp": np.nan}
    groups = table["group"].where(table["group"] != "unknown")
    s = equity_summary(table["dice"].to_numpy(float), groups)
    out = {"dice": s["overall"], "delta": s["delta"], "essp": s["es"], "worst_group": s["worst_group"]}
    for g, v in table.groupby("group")["dice"].mean().items():
        out[f"dice[{g}]"] = float(v)
    return out


def fit_job(cohort: Cohort, labelled: list[str], config: RoundConfig, *, out: Path,
            init: Checkpoint | None = None, round_id: int = 1, attribute: str | None = None) -> Job[TrainResult]:
    """Train a round's model on the labelled cases (no validation split: every label trains).

    Fine-tunes ``init`` for ``config.epochs``, or trains ``config.network`` from scratch for
    ``config.first_epochs``; seeded by ``config.seed`` and ``round_id``.
    """
    tc = TrainConfig(epochs=config.epochs if init is not None else config.first_epochs, lr=config.lr,
                     batch_size=config.train_batch, loss=config.loss, seed=config.seed * 1000 + round_id,
                     device=config.device, amp=config.amp, group_attribute=attribute, val_fraction=0.0)
    mc = None if init is not None else model_config_for(cohort, network=config.network, dropout=config.dropout)
    return (yield from train_job(cohort, mc, tc, out=out, train_ids=labelled, val_ids=[], init=init))


def round_job(project: Project, config: RoundConfig = RoundConfig(), *, train: bool | None = None,
              suggest: bool = True, model: Checkpoint | str | Path | None = None) -> Job[RoundResult]:
    """Run one active-learning round on ``project``; yields progress events.

    Parameters
    ----------
    train : bool or None
        ``None`` (default): train when the labelled set changed since the latest round's model
        or when there is none. ``True``: always train. ``False``: never (needs a model).
    suggest : bool
        Score the pool and suggest a batch (``False``: train and evaluate only, e.g. the last
        cycle of a simulation).
    model : Checkpoint, path or bundled name, optional
        This round's model (no training unless ``train=True``, which fine-tunes it).

    The round's id is reserved first (:meth:`~.project.Project.reserve_round`), so concurrent
    rounds on one project get distinct ids and model files; a round that fails or is cancelled
    gives its id back and removes the model file it created.
    """
    started = utc_now()
    rid = project.reserve_round(started)
    claimed: list[Path] = []
    try:
        return (yield from _round(project, config, rid, started, claimed, train=train, suggest=suggest,
                                  model=model))
    except BaseException:
        for path in claimed:
            path.unlink(missing_ok=True)
        project.release_round(rid)
        raise


@dataclass(frozen=True)
class _RoundSets:
    """Who is who in a round: the working cohort, its group attribute and the cases of each role
    (``pool_cases``: the whole pool split; ``labelled`` and ``pool_ids`` its annotated and
    unannotated cases; ``eval_ids`` the held-out cases with a label; ``key`` the labelled set's
    :func:`labelled_key`)."""

    cohort: Cohort
    attribute: str | None
    pool_cases: list[str]
    labelled: list[str]
    pool_ids: list[str]
    eval_ids: list[str]
    key: str


def _round(project: Project, config: RoundConfig, rid: int, started: str, claimed: list[Path], *,
           train: bool | None, suggest: bool, model: Checkpoint | str | Path | None) -> Job[RoundResult]:
    """The body of :func:`round_job` for the reserved round ``rid``, one stage after the other
    (model files it creates are appended to ``claimed``)."""
    t0 = time.perf_counter()
    sets = _round_sets(project, config)
    device = choose_device(config.device)

    t_train = time.perf_counter()
    ckpt, ckpt_path, trained = yield from _model_stage(project, config, sets, rid, claimed, train=train,
                                                       model=model)
    train_s = time.perf_counter() - t_train
    model_nn = ckpt.build(device)

    t_eval = time.perf_counter()
    evaluation, labelled_dice = yield from _evaluate_stage(sets, model_nn, ckpt, config, device)
    eval_s = time.perf_counter() - t_eval
    metrics = _round_metrics(sets, evaluation, labelled_dice, trained=trained, seed=config.seed)

    t_score = time.perf_counter()
    pool, suggestions = yield from _suggest_stage(sets, model_nn, ckpt, config, device, labelled_dice,
                                                  seed=config.seed * 1000 + rid, suggest=suggest)
    if config.strategy == "wle" and "group_weight" in pool and len(pool):
        for g, w in pool.groupby("group")["group_weight"].first().items():
            metrics[f"weight[{g}]"] = float(w)
    metrics.update(train_seconds=round(train_s, 3), eval_seconds=round(eval_s, 3),
                   score_seconds=round(time.perf_counter() - t_score, 3),
                   seconds=round(time.perf_counter() - t0, 3))
    project.record_round(started=started, strategy=config.strategy if suggest else None,
                         batch=config.batch if suggest else None, checkpoint=ckpt_path, metrics=metrics,
                         suggestions=suggestions, round_id=rid)
    return RoundResult(rid, metrics, suggestions, pool, evaluation, ckpt_path, labelled_dice)


def _round_sets(project: Project, config: RoundConfig) -> _RoundSets:
    """The labelled set, the pool and the held-out cases of a round on ``project``."""
    # latest annotations (checksummed once); cases without one keep the cohort's own label, which
    # only the held-out split reads: training and WLE take the labelled ids from the project
    cohort = project.working_cohort(cohort_labels=True)
    attribute = config.group_attribute or default_group_attribute(cohort)
    if attribute is not None and attribute not in cohort.attributes:
        raise InputDataError(cohort.source, f"group attribute {attribute!r} is not an attribute of the cohort "
                             f"(it has {cohort.attributes})")
    split = cohort.cases.set_index("case_id")["split"].astype(str)
    pool_cases = split.index[split == config.pool_split].tolist()
    if not pool_cases:
        raise InputDataError(cohort.source, f"split {config.pool_split!r} has no cases to label "
                             f"(splits: {sorted(split.unique())})")
    latest = project.latest()
    latest = latest[latest["case_id"].isin(pool_cases)]
    labelled = latest["case_id"].tolist()
    done = set(labelled)
    eval_ids = [c for c in split.index[split == config.eval_split]
                if isinstance(cohort.row(c)["label"], str) and cohort.row(c)["label"]]
    return _RoundSets(cohort, attribute, pool_cases, labelled, [c for c in pool_cases if c not in done], eval_ids,
                      labelled_key(latest))


def _model_stage(project: Project, config: RoundConfig, sets: _RoundSets, rid: int, claimed: list[Path], *,
                 train: bool | None, model: Checkpoint | str | Path | None) -> Job[tuple[Checkpoint, Path, bool]]:
    """The round's model: the given one or the latest round's, reused as is when the labelled set
    has not changed (or ``train=False``), else fine-tuned (warm start) or trained from scratch.

    Returns the checkpoint, its file and whether this round trained it.
    """
    previous = project.rounds()
    prev_ckpt = project.checkpoint_path()
    start = load_checkpoint(resolve_checkpoint(model)) if isinstance(model, str | Path) else model
    if start is not None:
        check_compatible(start, sets.cohort)
    same_set = (not previous.empty and previous["labelled_key"].iloc[-1] == sets.key and prev_ckpt is not None
                and prev_ckpt.is_file())
    must_train = train if train is not None else not same_set and start is None
    if must_train and not sets.labelled:
        raise InputDataError(project.root, f"no labelled case in split {config.pool_split!r} to train on; label "
                             "some first, or start from a model (the dock's Start model; --model in the CLI)")
    if not must_train:
        if start is not None:
            return start, start.path, False
        if prev_ckpt is not None and prev_ckpt.is_file():
            return load_checkpoint(prev_ckpt), prev_ckpt, False
        raise InputDataError(project.root, "no model for this round: train one (label some cases first) "
                             "or give a starting model (the dock's Start model; --model in the CLI)")
    ckpt_path = project.claim_round_model(rid)  # created exclusively: never another round's file
    claimed.append(ckpt_path)
    init = start
    if init is None and config.warm_start and prev_ckpt is not None and prev_ckpt.is_file():
        init = load_checkpoint(prev_ckpt)
    yield from fit_job(sets.cohort, sets.labelled, config, out=ckpt_path, init=init, round_id=rid,
                       attribute=sets.attribute)
    return load_checkpoint(ckpt_path), ckpt_path, True


def _evaluate_stage(sets: _RoundSets, model_nn, ckpt: Checkpoint, config: RoundConfig,
                    device) -> Job[tuple[pd.DataFrame, pd.DataFrame]]:
    """Per-case Dice (with the group) of the held-out cases and of the labelled set (whose
    per-group Dice gives WLE its weights)."""
    # the model's preprocessing; outputs come back on each case's grid
    settings = InferenceConfig(device=str(device), amp=config.amp, uncertainty="none", maps=False)
    predictor = Predictor(model_nn, ckpt.config, settings, pipeline=pipeline_of(ckpt))
    n = len(sets.eval_ids) + len(sets.labelled)
    yield Progress("evaluate", 0, n, f"{len(sets.eval_ids)} held-out cases")
    evaluation = _per_case_dice(predictor, sets.cohort, sets.eval_ids, sets.attribute)
    labelled_dice = _per_case_dice(predictor, sets.cohort, sets.labelled, sets.attribute)
    yield Progress("evaluate", n, n, "done")
    return evaluation, labelled_dice


def _round_metrics(sets: _RoundSets, evaluation: pd.DataFrame, labelled_dice: pd.DataFrame, *, trained: bool,
                   seed: int) -> dict:
    """The round's flat metrics (see :class:`RoundResult`) but for the WLE weights and the seconds."""
    metrics: dict = {"labelled_key": sets.key, "n_labelled": len(sets.labelled), "n_pool": len(sets.pool_ids),
                     "n_eval": len(sets.eval_ids), "group_attribute": sets.attribute, "trained": trained,
                     "seed": seed}
    lab_groups = case_groups(sets.cohort, sets.attribute, sets.labelled)
    for g in sorted(set(case_groups(sets.cohort, sets.attribute, sets.pool_cases))):
        n = int((lab_groups == g).sum())
        metrics[f"n_labelled[{g}]"] = n
        metrics[f"ratio[{g}]"] = n / len(sets.labelled) if sets.labelled else np.nan
    metrics.update(_summary(evaluation))
    metrics.update({f"labelled_{k}": v for k, v in _summary(labelled_dice).items() if k.startswith("dice[")})
    return metrics


def _suggest_stage(sets: _RoundSets, model_nn, ckpt: Checkpoint, config: RoundConfig, device,
                   labelled_dice: pd.DataFrame, *, seed: int, suggest: bool) -> Job[tuple[pd.DataFrame, pd.DataFrame]]:
    """Score the pool as the strategy needs (uncertainty maps, MC dropout, embeddings) and pick
    the batch. Returns the pool with its scores and the ranked suggestions (both without
    scores when ``suggest`` is false or the pool is empty)."""
    strategy = make_strategy(config.strategy, seed=seed, n_candidates=config.n_candidates, lam=config.lam)
    pool = pd.DataFrame({"case_id": sets.pool_ids,
                         "group": case_groups(sets.cohort, sets.attribute, sets.pool_ids).to_numpy()})
    suggestions = pd.DataFrame(columns=["case_id", "score", "group", "group_weight"])
    if not (suggest and sets.pool_ids):
        return pool, suggestions
    if strategy.scoring is not None:
        settings = InferenceConfig(device=str(device), amp=config.amp, batch_size=config.inference_batch,
                                   uncertainty="mc" if strategy.scoring == "mc" else "entropy",
                                   passes=config.mc_passes, roi_radius=config.roi_radius,
                                   maps=strategy.scoring in ("maps", "mc"), seed=config.seed)
        scored = yield from predict_pool_job(sets.cohort, Predictor(model_nn, ckpt.config, settings, pipeline=pipeline_of(ckpt)),
                                             sets.pool_ids)
        pool = pool.merge(scored.scores, on="case_id", how="left")
    embeddings = {}
    if strategy.needs_embeddings:
        embeddings = yield from embeddings_job(sets.cohort, sets.labelled + sets.pool_ids, model=model_nn,
                                               config=ckpt.config, encoder=config.encoder, device=device,
                                               pipeline=pipeline_of(ckpt))
    context = Context(labelled_dice=labelled_dice, embeddings=embeddings, labelled=sets.labelled)
    pool = strategy.score(pool, context)
    chosen = strategy.select(pool, config.batch, context)
    suggestions = pool.set_index("case_id").loc[chosen, ["score", "group", "group_weight"]].reset_index()
    yield Progress("suggest", len(chosen), config.batch, ", ".join(chosen))
    return pool, suggestions
