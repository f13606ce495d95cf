"""Fairness objectives: hand-checked weights and gradients, and the direction each one moves training."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_fairseg.errors import InputDataError
from napari_fairseg.metrics.subgroups import discover_subgroups
from napari_fairseg.progress import run_job
from napari_fairseg.training import (
    TrainConfig,
    divergence_weights,
    make_objective,
    model_config_for,
    train_job,
)


def _table(groups, sites=None):
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(groups))], "group": groups,
                         "site": sites or ["a"] * len(groups)})


def test_divergence_weights_by_hand():
    val = pd.DataFrame({"group": ["A"] * 6 + ["B"] * 2, "site": ["a", "b"] * 4,
                        "dice": [0.9, 0.9, 0.8, 0.8, 0.9, 0.8, 0.4, 0.6]})
    train = pd.DataFrame({"group": ["A", "B", "C"], "site": ["a", "b", "a"]})
    w = divergence_weights(val, train, "dice", ["group"], min_support=0.1, normalise=False)
    overall = val["dice"].mean()
    div_a, div_b = val.loc[val.group == "A", "dice"].mean() - overall, val.loc[val.group == "B", "dice"].mean() - overall
    # C is in no discovered subgroup: neutral weight 1 (METHODS §6)
    np.testing.assert_allclose(w, [abs(div_a), abs(div_b), 1.0])
    assert w[1] == pytest.approx(3 * w[0])  # 6:2 split → the minority's |divergence| is 3× larger
    # with two attributes a case takes the max |divergence| over all its subgroups (Eq. 2)
    w2 = divergence_weights(val, train, "dice", ["group", "site"], min_support=0.1, normalise=False)
    subs = discover_subgroups(val, "dice", ["group", "site"], min_support=0.1, with_items=True)
    for i, row in train.iterrows():
        member = [abs(d) for items, d in zip(subs["items"], subs["divergence"], strict=True)
                  if all(row[a] == v for a, v in items)]
        assert w2[i] == pytest.approx(max(member) if member else 1.0)
    wn = divergence_weights(val, train, "dice", ["group"], min_support=0.1)
    np.testing.assert_allclose(wn[:2], w[:2] / w[:2].mean())
    assert wn[2] == 1.0


def test_divergence_weighted_term_carries_gradient():
    train = _table(["A", "A", "B"])
    obj = make_objective("divergence", train, "group", attributes=["group"], alpha=0.2)
    obj.weights = np.array([0.5, 0.5, 2.0])
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    obj.combine(losses, ["c0", "c1", "c2"]).backward()
    # dL/dL_i = α/B + (1−α)·w_i/B: the weighted term trains (reference code's .item() would drop it)
    np.testing.assert_allclose(losses.grad.numpy(), (0.2 + 0.8 * np.array([0.5, 0.5, 2.0])) / 3, rtol=1e-6)


def test_groupdro_moves_weight_to_the_worse_group():
    obj = make_objective("groupdro", _table(["A", "A", "B"]), "group", eta=0.5)
    for _ in range(5):
        losses = torch.tensor([0.2, 0.2, 1.0], requires_grad=True)
        loss = obj.combine(losses, ["c0", "c1", "c2"])
    q = dict(zip(obj.names, obj.q.tolist(), strict=True))
    # hand: q_B/q_A = exp(η·(L_B − L_A)·steps) = exp(0.5·0.8·5)
    assert q["B"] / q["A"] == pytest.approx(np.exp(0.5 * 0.8 * 5))
    loss.backward()
    np.testing.assert_allclose(losses.grad.numpy(), [q["A"] / 2, q["A"] / 2, q["B"]], rtol=1e-5)


def test_equal_scale_plan_balances_groups():
    train = _table(["A"] * 7 + ["B"] * 2 + ["C"] * 4)
    obj = make_objective("equal-scale", train, "group")
    plan = obj.epoch_plan(np.random.default_rng(0))
    groups = obj.groups_of([c for c, _ in plan])
    assert pd.Series(groups).value_counts().to_dict() == {"A": 7, "B": 7, "C": 7}
    synthetic = pd.Series([g for g, (_, s) in zip(groups, plan, strict=True) if s]).value_counts().to_dict()
    assert synthetic == {"B": 5, "C": 3}  # only the oversampled extra copies are synthetic
    sub = make_objective("equal-scale", train, "group", n_target=3).epoch_plan(np.random.default_rng(0))
    assert len(sub) == 9 and len({c for c, _ in sub if c in {"c0", "c1", "c2", "c3", "c4", "c5", "c6"}}) == 3


def test_group_objectives_need_two_groups():
    with pytest.raises(InputDataError, match="needs at least two groups"):
        make_objective("groupdro", _table(["A", "A"]), "group")
    with pytest.raises(InputDataError, match="needs at least two groups"):
        make_objective("equal-scale", _table(["A", "A"]), None)
    with pytest.raises(ValueError, match="fairness objective must be one of"):
        make_objective("fair", _table(["A"]), "group")


@pytest.fixture(scope="module")
def trained_minority_dice(toy):
    """Minority / majority validation Dice after 15 full-batch steps, per objective and seed."""
    mc = model_config_for(toy, network="unet", features=(4, 8))
    settings = {"none": {}, "groupdro": {"dro_eta": 1.0}, "equal-scale": {},
                "divergence": {"attributes": ("group",), "min_support": 0.1}}
    out = {}
    for name, kw in settings.items():
        for seed in (0, 1, 2):
            log = run_job(train_job(toy, mc, TrainConfig(epochs=15, lr=1e-2, batch_size=40, fairness=name,
                                                         seed=seed, device="cpu", **kw))).log.iloc[-1]
            out[name, seed] = (log["val_dice[major]"], log["val_dice[minor]"])
    return out


@pytest.mark.parametrize("objective", ["groupdro", "equal-scale", "divergence"])
def test_objective_narrows_the_gap_on_a_biased_cohort(trained_minority_dice, objective):
    # Same seeds, same data, same steps: only the objective differs.
    base = np.array([trained_minority_dice["none", s] for s in (0, 1, 2)])
    fair = np.array([trained_minority_dice[objective, s] for s in (0, 1, 2)])
    assert fair[:, 1].mean() > base[:, 1].mean() + 0.15, (objective, base, fair)  # minority learns more
    gap_base, gap_fair = (base[:, 0] - base[:, 1]).mean(), (fair[:, 0] - fair[:, 1]).mean()
    assert gap_fair < gap_base - 0.15, (objective, gap_base, gap_fair)
