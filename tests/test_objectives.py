"""Fairness objectives: hand-checked weights and gradients, and the direction each one moves training."""

import itertools

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


SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def trained(toy):
    """Validation Dice (majority, minority, overall) and the predicted foreground fraction per group
    after 20 full-batch steps, per objective and seed; plus the true foreground fraction per group.

    20 steps at lr 2e-2: long enough that plain training has learned the majority on every seed
    (validation Dice 0.88–0.93), short enough that it still ignores the minority on some (seeds 0
    and 4: minority Dice 0.00, predicting ~65 % of its pixels as foreground). At the former setting
    (15 steps at 1e-2) plain training had not learned the majority either (0.53 on seed 1), and
    the objectives' "gain" was partly the majority collapsing (GroupDRO seeds 1–2: 0.35 / 0.38).
    """
    from napari_fairseg.data import load_case

    val = toy.cases[toy.cases["split"] == "val"]
    ids = {g: val.loc[val["group"] == g, "case_id"].tolist() for g in ("major", "minor")}
    truth = {g: np.mean([load_case(toy, c).label.mean() for c in ids[g]]) for g in ids}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 20 tiny models: one thread is faster than two contending ones
    try:
        return {key: _train_and_measure(toy, ids, *key) for key in itertools.product(OBJECTIVE_SETTINGS, SEEDS)}, truth
    finally:
        torch.set_num_threads(threads)


OBJECTIVE_SETTINGS = {"none": {}, "groupdro": {"dro_eta": 1.0}, "equal-scale": {},
                      "divergence": {"attributes": ("group",), "min_support": 0.1}}


def _train_and_measure(toy, ids, name, seed):
    from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job

    mc = model_config_for(toy, network="unet", features=(4, 8))
    # no flips/affine/intensity augmentation: only the objective differs (and the 20 runs stay fast)
    res = run_job(train_job(toy, mc, TrainConfig(epochs=20, lr=2e-2, batch_size=40, fairness=name, seed=seed,
                                                 device="cpu", augment=False, **OBJECTIVE_SETTINGS[name])))
    log = res.log.iloc[-1]
    cases = ids["major"] + ids["minor"]
    pred = run_job(predict_pool_job(toy, Predictor(res.model, mc, InferenceConfig(device="cpu")), cases, keep=True))
    fg = {g: np.mean([np.mean(pred.predictions[c].label > 0) for c in ids[g]]) for g in ids}
    return {"major": log["val_dice[major]"], "minor": log["val_dice[minor]"], "all": log["val_dice"],
            "fg_major": fg["major"], "fg_minor": fg["minor"]}


def _frame(trained, name):
    return pd.DataFrame([trained[0][name, s] for s in SEEDS], index=list(SEEDS))


def test_the_biased_toy_cohort_defeats_plain_training(trained):
    # The premise of the directional tests: plain training learns the majority on every seed and
    # fails the minority on some. Measured: majority 0.88–0.93; minority 0.00 / 0.81 / 0.88 / 0.91 / 0.00.
    base = _frame(trained, "none")
    assert (base["major"] > 0.85).all(), base
    assert (base["minor"] < 0.2).sum() >= 2 and base["minor"].mean() < 0.65, base


@pytest.mark.parametrize("objective", ["groupdro", "equal-scale", "divergence"])
def test_objective_narrows_the_gap_without_collapsing_the_majority(trained, objective):
    # Same seeds, same data, same steps: only the objective differs. Measured over the 5 seeds and
    # 3 objectives: minority 0.84–0.94, |gap| ≤ 0.06, majority ≥ 0.95× plain training's, overall
    # Dice ≥ plain training's − 0.003 per seed, predicted foreground 0.14–0.21 of the pixels (truth 0.15).
    base, fair = _frame(trained, "none"), _frame(trained, objective)
    truth = trained[1]
    msg = (objective, base.round(3).to_dict("list"), fair.round(3).to_dict("list"))
    assert fair["minor"].mean() > base["minor"].mean() + 0.15, msg  # the minority learns more
    gap_base, gap_fair = (base["major"] - base["minor"]).mean(), (fair["major"] - fair["minor"]).mean()
    assert gap_fair < gap_base - 0.15, msg
    # on every seed, not only on average: the minority is learned and the gap is small ...
    assert (fair["minor"] > 0.8).all() and ((fair["major"] - fair["minor"]).abs() < 0.1).all(), msg
    # ... without buying it with the majority (the gap must not close from above) ...
    assert (fair["major"] >= 0.92 * base["major"]).all(), msg
    assert (fair["all"] >= base["all"] - 0.03).all() and fair["all"].mean() > base["all"].mean() + 0.05, msg
    # ... and with sane segmentations, not a model painting most of the image
    for g in ("major", "minor"):
        ratio = fair[f"fg_{g}"] / truth[g]
        assert ((ratio > 0.6) & (ratio < 1.6)).all(), (g, ratio.round(2).tolist(), msg)


def test_divergence_objective_reports_its_weights_and_checks_its_settings():
    """What the training log records after validation, the documented defaults, and the
    settings it refuses (alpha outside [0, 1], attributes that are not columns)."""
    val = pd.DataFrame({"group": ["A"] * 6 + ["B"] * 2, "site": ["a", "b"] * 4,
                        "dice": [0.9, 0.9, 0.8, 0.8, 0.9, 0.8, 0.4, 0.6]})
    train = _table(["A", "A", "B"])
    obj = make_objective("divergence", train, "group", attributes=["group"])  # defaults: α 0.2, support 0.05
    logged = obj.after_validation(val, "dice")
    expected = divergence_weights(val, train, "dice", ["group"], min_support=0.05)
    np.testing.assert_allclose(obj.weights, expected)
    assert logged == {"weight_max": pytest.approx(expected.max()), "weight_min": pytest.approx(expected.min())}
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    combined = obj.combine(losses, ["c0", "c1", "c2"])
    assert combined.dtype == torch.float64
    assert float(combined) == pytest.approx(0.2 * 7 / 3 + 0.8 * float((torch.as_tensor(expected) * losses).mean()))
    for alpha in (0.0, 1.0):  # both ends are allowed: plain training, or the weighted term alone
        assert make_objective("divergence", train, "group", attributes=["group"], alpha=alpha).alpha == alpha
    for alpha in (-0.01, 1.01, 2.0):
        with pytest.raises(ValueError, match="alpha"):
            make_objective("divergence", train, "group", attributes=["group"], alpha=alpha)
    with pytest.raises(InputDataError, match="not columns"):
        make_objective("divergence", train, "group", attributes=["group", "age"])


def test_groupdro_reports_q_per_group_by_name():
    obj = make_objective("groupdro", _table(["A", "A", "B"]), "group", eta=0.5)
    logged = obj.after_validation(pd.DataFrame(), "dice")
    assert set(logged) == {"q[A]", "q[B]"} and sum(logged.values()) == pytest.approx(1.0)


# ---- fast unit tests of the objectives' arithmetic against hand computations


def test_plain_objective_sees_every_case_once_unmarked_whatever_the_table_index():
    # the trainer's table comes from ``discrete.loc[ids].reset_index()``; a cohort may well have an
    # attribute column called "index" and a non-default row index
    train = pd.DataFrame({"case_id": ["a", "b", "c"], "index": [7, 8, 9], "group": ["A", "B", "B"]},
                         index=[10, 20, 30])
    obj = make_objective("none", train, "group")
    assert list(obj.train.columns) == ["case_id", "index", "group"]
    plan = obj.epoch_plan(np.random.default_rng(0))
    assert sorted(c for c, _ in plan) == ["a", "b", "c"]
    assert not any(s for _, s in plan)  # plain training augments nothing
    assert float(obj.combine(torch.tensor([1.0, 2.0, 6.0]), ["a", "b", "c"])) == pytest.approx(3.0)


def test_missing_group_values_form_the_unknown_group():
    train = pd.DataFrame({"case_id": ["c0", "c1", "c2", "c3"], "group": ["A", None, "B", np.nan]})
    obj = make_objective("groupdro", train, "group", eta=0.5)
    assert obj.names == ["A", "B", "unknown"]
    assert obj.groups_of(["c3", "c0", "c1"]) == ["unknown", "A", "unknown"]
    # ... and the divergence weights match a training case with a missing value to the validation
    # subgroup "group=unknown" (the validation case with Dice 0.1)
    val = pd.DataFrame({"group": ["A"] * 10 + ["B"] * 9 + [None], "dice": [0.9] * 10 + [0.8] * 9 + [0.1]})
    w = divergence_weights(val, train, "dice", ["group"], normalise=False)
    overall = val["dice"].mean()
    np.testing.assert_allclose(w, [0.9 - overall, abs(0.1 - overall), abs(0.8 - overall), abs(0.1 - overall)])


def test_divergence_weights_respect_min_support_and_default_to_5_percent():
    # C has 1 of 20 validation cases: support 0.05, a subgroup at the default minimum support only
    val = pd.DataFrame({"group": ["A"] * 10 + ["B"] * 9 + ["C"], "dice": [0.9] * 10 + [0.8] * 9 + [0.1]})
    train = _table(["A", "B", "C"])
    overall = (0.9 * 10 + 0.8 * 9 + 0.1) / 20
    div = [0.9 - overall, abs(0.8 - overall), abs(0.1 - overall)]
    np.testing.assert_allclose(divergence_weights(val, train, "dice", ["group"], normalise=False), div)
    np.testing.assert_allclose(divergence_weights(val, train, "dice", ["group"], min_support=0.1, normalise=False),
                               [*div[:2], 1.0])  # C is below the support: neutral weight
    # the objective passes its own min_support through to DivExplorer
    obj = make_objective("divergence", train, "group", attributes=["group"], min_support=0.1)
    obj.after_validation(val, "dice")
    np.testing.assert_allclose(obj.weights, [div[0] / np.mean(div[:2]), div[1] / np.mean(div[:2]), 1.0])


def test_constant_validation_dice_gives_neutral_weights():
    # every subgroup's divergence is 0 up to rounding (0.7 is not exact in binary): no case may be
    # up- or down-weighted by that noise
    val = pd.DataFrame({"group": ["A"] * 6 + ["B"] * 2, "site": ["a", "b"] * 4, "dice": [0.7] * 8})
    train = _table(["A", "B", "A"], sites=["a", "b", "b"])
    np.testing.assert_array_equal(divergence_weights(val, train, "dice", ["group", "site"]), [1.0, 1.0, 1.0])


def test_divergence_combine_keeps_the_losses_dtype_and_device():
    obj = make_objective("divergence", _table(["A", "A", "B"]), "group", attributes=["group"], alpha=0.5)
    obj.weights = np.array([1.0, 1.0, 3.0])
    out = obj.combine(torch.tensor([1.0, 2.0, 4.0]), ["c2", "c0", "c1"])
    assert out.dtype == torch.float32  # float64 weights must not promote a float32 loss
    assert float(out) == pytest.approx(0.5 * 7 / 3 + 0.5 * (3 * 1 + 2 + 4) / 3)
    # on another device (meta stands in for an accelerator) the weights follow the losses there
    assert obj.combine(torch.ones(3, device="meta"), ["c0", "c1", "c2"]).device.type == "meta"


def test_groupdro_q_update_by_hand_in_double_precision():
    obj = make_objective("groupdro", _table(["A", "B", "B", "C"]), "group")  # default eta 0.01
    assert obj.q.dtype == torch.float64
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    out = obj.combine(losses, ["c0", "c1", "c2"])  # C is not in the batch: its exponent is 0
    e = np.exp(0.01 * np.array([1.0, 3.0, 0.0]))
    q = e / e.sum()
    np.testing.assert_allclose(obj.q.numpy(), q, rtol=1e-13)
    assert out.dtype == torch.float64 and float(out) == pytest.approx(q[0] * 1 + q[1] * 3, rel=1e-13)
    out32 = obj.combine(torch.tensor([1.0, 2.0, 4.0]), ["c0", "c1", "c2"])
    assert out32.dtype == torch.float32  # float64 q must not promote a float32 loss
    assert obj.state_dict()["q"].dtype == torch.float64


def test_groupdro_refuses_a_zero_step():
    for eta in (0.0, -0.1):
        with pytest.raises(ValueError, match="eta"):
            make_objective("groupdro", _table(["A", "B"]), "group", eta=eta)


@pytest.mark.parametrize("seed", range(5))
def test_equal_scale_subsamples_without_repeats(seed):
    train = _table(["A"] * 7 + ["B"] * 2)
    plan = make_objective("equal-scale", train, "group", n_target=6).epoch_plan(np.random.default_rng(seed))
    big = [c for c, s in plan if c in {f"c{i}" for i in range(7)}]
    assert len(big) == 6 and len(set(big)) == 6  # 6 distinct of the 7, none marked synthetic
    assert not any(s for c, s in plan if c in big)
    small = [(c, s) for c, s in plan if c in {"c7", "c8"}]
    assert sorted(c for c, s in small if not s) == ["c7", "c8"] and sum(s for _, s in small) == 4


def test_equal_scale_target_of_one_case_per_group():
    obj = make_objective("equal-scale", _table(["A"] * 3 + ["B"] * 2), "group", n_target=1)
    plan = obj.epoch_plan(np.random.default_rng(0))
    assert sorted(obj.groups_of([c for c, _ in plan])) == ["A", "B"] and not any(s for _, s in plan)
    with pytest.raises(ValueError, match="equal-scale target"):
        make_objective("equal-scale", _table(["A", "B"]), "group", n_target=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_objectives_combine_on_cuda():
    obj = make_objective("groupdro", _table(["A", "B", "B"]), "group", eta=0.5)
    out = obj.combine(torch.tensor([1.0, 2.0, 4.0], device="cuda"), ["c0", "c1", "c2"])
    e = np.exp(0.5 * np.array([1.0, 3.0]))
    assert out.device.type == "cuda" and float(out) == pytest.approx(float(e @ [1.0, 3.0] / e.sum()), rel=1e-5)
    div = make_objective("divergence", _table(["A", "B", "B"]), "group", attributes=["group"])
    assert div.combine(torch.ones(3, device="cuda"), ["c0", "c1", "c2"]).device.type == "cuda"
