"""Acquisition strategies: which unlabelled cases to annotate next (METHODS §5).

Every strategy has the same two steps. :meth:`Strategy.score` takes a pool table (one row per
unlabelled case: ``case_id``, ``group`` and the uncertainty scores of
:func:`~napari_fairseg.inference.predict_pool_job`) and returns it with ``score`` and
``group_weight`` columns, kept for display. :meth:`Strategy.select` picks a batch of case ids
from that table.

Strategies (:data:`STRATEGIES`):

``random``            uniform random.
``entropy``           global mean voxel entropy.
``localized``         masked scaled entropy (seed 001 Eq. 1).
``wle``               weighted localized entropy (seed 001 Eq. 2): ``w_g · Ĥ`` with
                      ``w = softmax(z)``, ``z_g = (mean Dice_all − mean Dice_g) / std_all`` on the
                      labelled set. A group with no labelled case gets the largest observed ``z``
                      (it is at least as unknown as the worst group); ``std_all = 0`` gives equal
                      weights.
``stochastic``        stochastic batches (Gaillochet et al. 2023): the best of ``n_candidates``
                      random batches by mean masked scaled entropy.
``epistemic``         MONAI Label's strategy: mean entropy of the MC-dropout mean (the pool must
                      be scored with ``uncertainty="mc"``).
``fair-base`` …       the fair-quota family of seed 000: the batch is split into equal quotas per
``fair-ap``           group, filled at random (base), by representativeness (attr: closest to the
                      group's centre in embedding space), by diversity (poly: greedy k-centre
                      against the labelled and already chosen cases), or both (ap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..options import STRATEGIES

FAIR_QUOTA = ("fair-base", "fair-attr", "fair-poly", "fair-ap")


def wle_group_weights(labelled_dice: pd.DataFrame, groups: Sequence[str]) -> dict[str, float]:
    """Seed 001 Eq. 2 group weights from the labelled set's per-case Dice.

    Parameters
    ----------
    labelled_dice : pandas.DataFrame
        ``group`` and ``dice`` per labelled case (the current model's Dice).
    groups : sequence of str
        Every group that needs a weight (labelled or not).

    Returns
    -------
    dict
        group → ``w_g``; the weights sum to 1.
    """
    groups = list(dict.fromkeys(str(g) for g in groups))
    d = labelled_dice.dropna(subset=["dice"])
    if d.empty:
        return dict.fromkeys(groups, 1 / len(groups))
    sd = float(d["dice"].std(ddof=0))
    means = d.groupby(d["group"].astype(str))["dice"].mean()
    z = {g: (float(d["dice"].mean()) - float(means[g])) / sd if sd > 0 else 0.0 for g in means.index}
    top = max(z.values())
    zs = np.array([z.get(g, top) for g in groups])
    w = np.exp(zs - zs.max())
    return dict(zip(groups, (w / w.sum()).tolist(), strict=True))


@dataclass
class Context:
    """What strategies may use beyond the pool table.

    Attributes
    ----------
    labelled_dice : pandas.DataFrame
        ``case_id``, ``group``, ``dice`` of the labelled cases under the current model (WLE).
    embeddings : mapping of str to numpy.ndarray
        case id → feature vector, for pool and labelled cases (fair-attr / poly / ap).
    labelled : sequence of str
        Labelled case ids (the starting centres of k-centre).
    """

    labelled_dice: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["case_id", "group", "dice"]))
    embeddings: Mapping[str, np.ndarray] = field(default_factory=dict)
    labelled: Sequence[str] = ()


class Strategy:
    """Base: ``score`` fills ``score`` / ``group_weight``; ``select`` takes the top ``batch``."""

    name = "base"
    #: how the pool must be scored first: ``None`` (no prediction), ``"roi"`` (masked scaled
    #: entropy, lean ``maps=False`` scoring), ``"maps"`` (mean entropy needs whole maps) or
    #: ``"mc"`` (MC dropout with maps)
    scoring: str | None = None
    #: whether :class:`Context` must carry embeddings of the pool and labelled cases
    needs_embeddings = False

    def __init__(self, *, seed: int, n_candidates: int, lam: float):
        self.rng = np.random.default_rng(seed)
        self.n_candidates, self.lam = n_candidates, lam

    def _base(self, pool: pd.DataFrame, context: Context) -> np.ndarray:
        """Per-case scores ``(n,)``; may set ``pool["group_weight"]``."""
        raise NotImplementedError

    def score(self, pool: pd.DataFrame, context: Context | None = None) -> pd.DataFrame:
        """The pool table with ``score`` and ``group_weight`` columns (higher score = label first)."""
        out = pool.copy()
        out["group"] = out["group"].astype(str)
        out["group_weight"] = 1.0
        out["score"] = self._base(out, context or Context())
        return out

    def select(self, scored: pd.DataFrame, batch: int, context: Context | None = None) -> list[str]:
        _check_batch(scored, batch)
        order = scored.sort_values(["score", "case_id"], ascending=[False, True])  # ties: by case id
        return order["case_id"].head(batch).tolist()


def _check_batch(scored: pd.DataFrame, batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if scored.empty:
        raise ValueError("the pool is empty: every case is labelled")


def _column(pool: pd.DataFrame, name: str, strategy: str) -> np.ndarray:
    if name not in pool.columns or (len(pool) and pool[name].isna().all()):
        raise ValueError(f"strategy {strategy!r} needs the pool score {name!r}; score the pool with "
                         f"{'MC dropout' if strategy == 'epistemic' else 'uncertainty maps'} first")
    return pool[name].to_numpy(dtype=float)


class RandomStrategy(Strategy):
    name = "random"

    def _base(self, pool, context):
        return self.rng.random(len(pool))


class EntropyStrategy(Strategy):
    name = "entropy"
    scoring = "maps"

    def _base(self, pool, context):
        return _column(pool, "mean_entropy", self.name)


class EpistemicStrategy(EntropyStrategy):
    name = "epistemic"
    scoring = "mc"


class LocalizedStrategy(Strategy):
    name = "localized"
    scoring = "roi"

    def _base(self, pool, context):
        return _column(pool, "masked_entropy", self.name)


class WLEStrategy(Strategy):
    name = "wle"
    scoring = "roi"

    def _base(self, pool, context):
        weights = wle_group_weights(context.labelled_dice, pool["group"])
        pool["group_weight"] = pool["group"].map(weights).astype(float)
        return pool["group_weight"].to_numpy() * _column(pool, "masked_entropy", self.name)


class StochasticStrategy(LocalizedStrategy):
    name = "stochastic"

    def select(self, scored, batch, context=None):
        _check_batch(scored, batch)
        n = len(scored)
        if batch >= n:
            return scored["case_id"].tolist()
        scores = scored["score"].to_numpy()
        best, best_mean = None, -np.inf
        for _ in range(self.n_candidates):
            idx = self.rng.choice(n, batch, replace=False)
            m = scores[idx].mean()
            if m > best_mean:
                best, best_mean = idx, m
        return scored["case_id"].iloc[np.sort(best)].tolist()


def quotas(groups: pd.Series, batch: int) -> dict[str, int]:
    """Equal quotas per group present in the pool; the remainder goes to the largest groups.

    A group with fewer pool cases than its quota gives its unused places to the others.
    """
    sizes = groups.value_counts()
    order = sorted(sizes.index, key=lambda g: (-sizes[g], str(g)))
    quota = dict.fromkeys(order, 0)
    left = min(batch, int(sizes.sum()))
    while left > 0:
        open_ = [g for g in order if quota[g] < sizes[g]]
        share = max(1, left // len(open_))
        for g in open_:
            take = min(share, sizes[g] - quota[g], left)
            quota[g] += take
            left -= take
            if left == 0:
                break
    return quota


class FairQuotaStrategy(Strategy):
    """Seed 000's fair-quota family; ``mode`` is base, attr, poly or ap."""

    def __init__(self, mode: str, **kw):
        super().__init__(**kw)
        self.mode, self.name = mode, f"fair-{mode}"
        self.needs_embeddings = mode != "base"

    def _base(self, pool, context):
        if self.mode == "base":
            return self.rng.random(len(pool))
        return np.zeros(len(pool))  # ranking happens in select (it depends on what is chosen)

    def _emb(self, ids, context) -> np.ndarray:
        missing = [c for c in ids if c not in context.embeddings]
        if missing:
            raise ValueError(f"strategy {self.name!r} needs embeddings for cases {missing[:5]}")
        return np.stack([np.asarray(context.embeddings[c], dtype=float) for c in ids])

    def select(self, scored, batch, context=None):
        _check_batch(scored, batch)
        context = context or Context()
        chosen: list[str] = []
        for g, k in quotas(scored["group"], batch).items():
            members = scored[scored["group"] == g]
            if k == 0:
                continue
            if self.mode == "base":
                chosen += members.sort_values("score", ascending=False)["case_id"].head(k).tolist()
                continue
            ids = members["case_id"].tolist()
            x = self._emb(ids, context)
            centre = x.mean(axis=0)
            rep = -np.linalg.norm(x - centre, axis=1)  # representativeness: close to the centre
            anchors = [c for c in context.labelled if c in context.embeddings] + chosen
            a = self._emb(anchors, context) if anchors else np.empty((0, x.shape[1]))
            picked: list[int] = []
            for _ in range(k):
                if self.mode == "attr":
                    crit = rep.copy()
                else:
                    ref = np.vstack([a, x[picked]]) if picked else a
                    div = (np.min(np.linalg.norm(x[:, None] - ref[None], axis=2), axis=1) if len(ref)
                           else np.linalg.norm(x - centre, axis=1))  # no anchor: start from the farthest
                    crit = div if self.mode == "poly" else (
                        self.lam * _unit(rep) + (1 - self.lam) * _unit(div))
                crit[picked] = -np.inf
                picked.append(int(np.argmax(crit)))
            chosen += [ids[i] for i in picked]
        return chosen


def _unit(v: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(v)), float(np.max(v))
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def make_strategy(name: str, *, seed: int = 0, n_candidates: int = 200, lam: float = 0.5) -> Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    kw = {"seed": seed, "n_candidates": n_candidates, "lam": lam}
    if name in FAIR_QUOTA:
        return FairQuotaStrategy(name.split("-", 1)[1], **kw)
    cls = {"random": RandomStrategy, "entropy": EntropyStrategy, "localized": LocalizedStrategy,
           "wle": WLEStrategy, "stochastic": StochasticStrategy, "epistemic": EpistemicStrategy}[name]
    return cls(**kw)
