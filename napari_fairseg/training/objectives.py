"""Fairness objectives: how a batch's per-case losses become one loss, and what an epoch samples.

Each objective is selected by name (:data:`OBJECTIVES`):

``none``
    Mean of the per-case losses.
``divergence``
    Seed 004 Eq. 2–4. After each validation, DivExplorer finds the subgroups of the per-case
    validation Dice; every training case gets ``w_i = max |divergence|`` over the subgroups it
    belongs to; ``L = α·mean(L_i) + (1−α)·mean(w_i·L_i)``. The weighted term is computed from
    the loss tensors, so it carries gradient (the reference code's ``loss.item()`` does not).
    The weights are divided by their mean over the training cases in some subgroup, so that
    both terms have the same scale and ``α`` keeps its meaning; a case in no subgroup gets the
    neutral weight 1 (METHODS §6). Before the first validation all weights are 1.
``groupdro``
    Sagawa et al. 2020: group weights ``q_g ← q_g·exp(η·L_g)`` (normalised) after each batch,
    ``L = Σ_g q_g L_g`` over the groups in the batch. Under distributed training the group
    losses that update ``q`` are those of the whole batch across the ranks (:attr:`Objective.reduce`),
    so every rank keeps the same ``q``.
``equal-scale``
    Seed 003 §2.4: each epoch draws ``N_target`` cases per group (default: the largest group's
    size); small groups are oversampled and each extra copy is marked synthetic (the trainer
    applies an intensity augmentation to it — our stand-in for the paper's diffusion samples),
    large groups are subsampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputDataError
from ..options import OBJECTIVES

#: mean |divergence| at or below which the validation subgroups count as not diverging at all
_NO_DIVERGENCE = 1e-9


def _same(x):
    return x


class Objective:
    """Plain ERM: mean of per-case losses, every training case once per epoch, shuffled.

    ``reduce`` sums a tensor of batch statistics over the training processes (the trainer sets
    it under ``torchrun``; in one process it returns its argument).
    """

    name = "none"
    needs_groups = False

    def __init__(self, train: pd.DataFrame, group_attribute: str | None):
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = _same
        self.train = train.reset_index(drop=True)
        self.group_attribute = group_attribute
        self.index = {cid: i for i, cid in enumerate(self.train["case_id"])}
        if self.needs_groups:
            groups = set(self.groups_of(self.train["case_id"])) if group_attribute is not None else set()
            if len(groups) < 2:
                raise InputDataError(None, f"fairness objective {self.name!r} needs at least two groups in "
                                     f"attribute {group_attribute!r} among the training cases; found "
                                     f"{sorted(groups)}")

    def groups_of(self, ids: Sequence[str]) -> list[str]:
        """The ``group_attribute`` value of each case (``unknown`` where missing); group objectives only."""
        col = self.train[self.group_attribute].astype("string").fillna("unknown")
        return [str(col.iloc[self.index[c]]) for c in ids]

    def epoch_plan(self, rng: np.random.Generator) -> list[tuple[str, bool]]:
        """The (case id, synthetic?) pairs of one epoch, in training order."""
        ids = self.train["case_id"].tolist()
        return [(ids[i], False) for i in rng.permutation(len(ids))]

    def combine(self, losses: torch.Tensor, ids: Sequence[str]) -> torch.Tensor:
        return losses.mean()

    def after_validation(self, val: pd.DataFrame, outcome: str) -> dict:
        """Update from per-case validation results; returns figures for the training log."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DivergenceObjective(Objective):
    name = "divergence"

    def __init__(self, train, group_attribute, *, attributes: Sequence[str], alpha: float, min_support: float):
        super().__init__(train, group_attribute)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not attributes:
            raise InputDataError(None, "the divergence objective needs at least one attribute to find subgroups")
        missing = [a for a in attributes if a not in self.train.columns]
        if missing:
            raise InputDataError(None, f"attributes {missing} are not columns of the training cases")
        self.attributes, self.alpha, self.min_support = list(attributes), alpha, min_support
        self.weights = np.ones(len(self.train))

    def combine(self, losses, ids):
        w = torch.as_tensor(self.weights[[self.index[c] for c in ids]], dtype=losses.dtype, device=losses.device)
        return self.alpha * losses.mean() + (1 - self.alpha) * (w * losses).mean()

    def after_validation(self, val, outcome):
        self.weights = divergence_weights(val, self.train, outcome, self.attributes, min_support=self.min_support)
        return {"weight_max": float(self.weights.max()), "weight_min": float(self.weights.min())}

    def state_dict(self):
        return {"weights": torch.as_tensor(self.weights)}

    def load_state_dict(self, state):
        if "weights" in state:
            self.weights = state["weights"].numpy().astype(float)


def divergence_weights(val: pd.DataFrame, train: pd.DataFrame, outcome: str, attributes: Sequence[str], *,
                       min_support: float = 0.05, normalise: bool = True) -> np.ndarray:
    """Seed 004 Eq. 2: each training case's weight from the validation subgroups' divergence.

    Parameters
    ----------
    val : pandas.DataFrame
        Validation cases: attribute columns and the per-case ``outcome`` (e.g. Dice).
    train : pandas.DataFrame
        Training cases with the same attribute columns.

    Returns
    -------
    numpy.ndarray
        ``(n_train,)``: ``max |divergence|`` over the discovered subgroups whose items all hold
        for the case, divided by the mean of that over cases in some subgroup when ``normalise``;
        1 for a case in no subgroup.
    """
    from ..metrics.subgroups import discover_subgroups

    found = discover_subgroups(val, outcome, attributes, min_support=min_support, with_items=True)
    values = {a: train[a].astype("string").fillna("unknown").astype(str).to_numpy() for a in attributes}
    best = np.full(len(train), np.nan)
    for items, div in zip(found["items"], found["divergence"].abs(), strict=True):
        member = np.ones(len(train), dtype=bool)
        for att, val_ in items:
            member &= values[att] == val_
        best[member] = np.fmax(best[member], div)
    inside = ~np.isnan(best)
    if normalise and inside.any():
        scale = best[inside].mean()
        # a constant validation outcome gives divergences of rounding size (~1e-17), not 0: dividing
        # by their mean would turn that noise into weights of order 1
        best[inside] = best[inside] / scale if scale > _NO_DIVERGENCE else 1.0
    best[~inside] = 1.0
    return best


class GroupDROObjective(Objective):
    name = "groupdro"
    needs_groups = True

    def __init__(self, train, group_attribute, *, eta: float):
        super().__init__(train, group_attribute)
        if eta <= 0:
            raise ValueError(f"groupdro eta must be > 0, got {eta}")
        self.eta = eta
        self.names = sorted(set(self.groups_of(self.train["case_id"])))
        self.q = torch.full((len(self.names),), 1 / len(self.names), dtype=torch.float64)

    def combine(self, losses, ids):
        groups = self.groups_of(ids)
        g_idx = torch.as_tensor([self.names.index(g) for g in groups], device=losses.device)
        n_groups = len(self.names)
        counts = torch.zeros(n_groups, device=losses.device, dtype=losses.dtype).index_add_(0, g_idx,
                                                                                           torch.ones_like(losses))
        sums = torch.zeros(n_groups, device=losses.device, dtype=losses.dtype).index_add_(0, g_idx, losses)
        group_loss = sums / counts.clamp_min(1)
        every = self.reduce(torch.stack([counts, sums.detach()]))  # over all ranks' batches
        with torch.no_grad():  # a group in no batch has mean loss 0: its q_g is not raised
            every_loss = (every[1] / every[0].clamp_min(1)).cpu().double()
            self.q *= torch.exp(self.eta * every_loss)
            self.q /= self.q.sum()
        return (self.q.to(losses.device, losses.dtype) * group_loss).sum()

    def after_validation(self, val, outcome):
        return {f"q[{n}]": float(q) for n, q in zip(self.names, self.q, strict=True)}

    def state_dict(self):
        return {"q": self.q.clone()}

    def load_state_dict(self, state):
        if "q" in state:
            self.q = state["q"].double()


class EqualScaleObjective(Objective):
    name = "equal-scale"
    needs_groups = True

    def __init__(self, train, group_attribute, *, n_target: int | None = None):
        super().__init__(train, group_attribute)
        self.groups = np.array(self.groups_of(self.train["case_id"]))
        sizes = pd.Series(self.groups).value_counts()
        self.n_target = int(n_target or sizes.max())
        if self.n_target < 1:
            raise ValueError(f"equal-scale target must be >= 1, got {n_target}")

    def epoch_plan(self, rng):
        ids = self.train["case_id"].to_numpy()
        plan: list[tuple[str, bool]] = []
        for g in sorted(set(self.groups)):
            members = ids[self.groups == g]
            if len(members) >= self.n_target:
                plan += [(c, False) for c in rng.choice(members, self.n_target, replace=False)]
            else:
                plan += [(c, False) for c in members]
                plan += [(c, True) for c in rng.choice(members, self.n_target - len(members), replace=True)]
        return [plan[i] for i in rng.permutation(len(plan))]


def make_objective(name: str, train: pd.DataFrame, group_attribute: str | None, *,
                   attributes: Sequence[str] = (), alpha: float = 0.2, min_support: float = 0.05,
                   eta: float = 0.01, n_target: int | None = None) -> Objective:
    """Build the objective called ``name`` (one of :data:`OBJECTIVES`)."""
    if name not in OBJECTIVES:
        raise ValueError(f"fairness objective must be one of {OBJECTIVES}, got {name!r}")
    if name == "divergence":
        return DivergenceObjective(train, group_attribute, attributes=attributes, alpha=alpha,
                                   min_support=min_support)
    if name == "groupdro":
        return GroupDROObjective(train, group_attribute, eta=eta)
    if name == "equal-scale":
        return EqualScaleObjective(train, group_attribute, n_target=n_target)
    return Objective(train, group_attribute)
