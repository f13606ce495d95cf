"""Acquisition strategies on hand-checkable pools."""

import math

import numpy as np
import pandas as pd
import pytest

from napari_fairseg.active import STRATEGIES, Context, make_strategy, quotas, wle_group_weights


def _pool():
    return pd.DataFrame({
        "case_id": ["a", "b", "c", "d", "e", "f"],
        "group": ["G1", "G1", "G1", "G2", "G2", "G2"],
        "mean_entropy": [0.10, 0.30, 0.20, 0.50, 0.05, 0.40],
        "masked_entropy": [0.40, 0.10, 0.30, 0.20, 0.35, 0.25],
    })


def test_wle_weights_by_hand():
    lab = pd.DataFrame({"group": ["G1", "G1", "G2", "G2"], "dice": [0.5, 0.7, 0.9, 0.9]})
    w = wle_group_weights(lab, ["G1", "G2", "G3"])
    mean, sd = 0.75, np.std([0.5, 0.7, 0.9, 0.9])
    z1, z2 = (mean - 0.6) / sd, (mean - 0.9) / sd
    z3 = max(z1, z2)  # a group with no labelled case: the largest observed z (documented rule)
    e = np.exp([z1, z2, z3])
    np.testing.assert_allclose([w["G1"], w["G2"], w["G3"]], e / e.sum())
    assert sum(w.values()) == pytest.approx(1.0)
    same = wle_group_weights(pd.DataFrame({"group": ["G1", "G2"], "dice": [0.8, 0.8]}), ["G1", "G2"])
    assert same == {"G1": 0.5, "G2": 0.5}  # std 0: equal weights, no division by zero
    assert wle_group_weights(pd.DataFrame(columns=["group", "dice"]), ["G1", "G2"]) == {"G1": 0.5, "G2": 0.5}


def test_wle_weights_by_hand_with_unequal_groups():
    # Seed 001 Eq. 2 with 2 Group 1 and 6 Group 2 labelled cases, all figures by hand:
    # mean over all 8 labelled cases = 6.4 / 8 = 0.8 (the mean of the two group means, 0.7167, differs);
    # σ_all = population std over the 8 cases = sqrt(0.185 / 8) = 0.152069 (the std of the group means
    # or a sample std would give other weights); group means 0.55 and 5.3 / 6 = 0.883333.
    lab = pd.DataFrame({"group": ["G1"] * 2 + ["G2"] * 6, "dice": [0.5, 0.6, 0.9, 0.85, 0.95, 0.9, 0.8, 0.9]})
    sd = math.sqrt(0.185 / 8)
    z1, z2 = (0.8 - 0.55) / sd, (0.8 - 5.3 / 6) / sd
    assert (z1, z2) == pytest.approx((1.643990, -0.547997), abs=1e-5)
    e1, e2 = math.exp(z1), math.exp(z2)
    w = wle_group_weights(lab, ["G1", "G2", "G3"])  # G3 unlabelled: the largest observed z, z1
    assert [w["G1"], w["G2"], w["G3"]] == pytest.approx([e1 / (2 * e1 + e2), e2 / (2 * e1 + e2), e1 / (2 * e1 + e2)])
    assert w["G1"] == pytest.approx(0.473553, abs=1e-6)
    # Note: replacing the mean over all cases by the mean of the group means shifts every z by the
    # same constant, which the softmax cancels — that substitution cannot change any weight.


def test_wle_reranks_towards_the_worse_group():
    pool = _pool()
    lab = pd.DataFrame({"group": ["G1", "G1", "G2", "G2"], "dice": [0.5, 0.6, 0.9, 0.95]})
    ctx = Context(labelled_dice=lab)
    loc = make_strategy("localized")
    assert loc.select(loc.score(pool, ctx), 2, ctx) == ["a", "e"]  # Eq. 1 alone: top Ĥ
    wle = make_strategy("wle")
    scored = wle.score(pool, ctx)
    w = wle_group_weights(lab, ["G1", "G2"])
    np.testing.assert_allclose(scored["score"], scored["group"].map(w) * pool["masked_entropy"])
    assert (scored["group_weight"] == scored["group"].map(w)).all()
    assert wle.select(scored, 2, ctx) == ["a", "c"]  # G1 (worse Dice) is preferred


def test_entropy_and_random_baselines():
    pool = _pool()
    ent = make_strategy("entropy")
    assert ent.select(ent.score(pool), 3) == ["d", "f", "b"]
    r1, r2 = make_strategy("random", seed=3), make_strategy("random", seed=3)
    pick = r1.select(r1.score(pool), 3)
    assert pick == r2.select(r2.score(pool), 3) and len(set(pick)) == 3  # seeded, no repeats
    with pytest.raises(ValueError, match="needs the pool score 'mean_entropy'"):
        ent.score(pool.drop(columns="mean_entropy"))
    with pytest.raises(ValueError, match="MC dropout"):
        make_strategy("epistemic").score(pool.drop(columns="mean_entropy"))
    with pytest.raises(ValueError, match="pool is empty"):
        ent.select(ent.score(pool.iloc[:0]), 2)
    with pytest.raises(ValueError, match="strategy must be one of"):
        make_strategy("bald")


def test_stochastic_batches_keep_the_best_random_candidate():
    pool = _pool()
    st = make_strategy("stochastic", seed=0, n_candidates=500)
    pick = st.select(st.score(pool), 2)
    # with 500 draws of 2 out of 6 the best pair (a, e: 0.40 + 0.35) is all but certain
    assert sorted(pick) == ["a", "e"]
    h = pool.set_index("case_id")["masked_entropy"]
    # The same seed draws the same candidate sequence, so n candidates are a prefix of n + k: the
    # kept batch's mean can only rise with n_candidates, and one candidate is a random pair, not the
    # top-Ĥ pair (which a greedy pick would return for every seed).
    by_seed = {}
    for seed in range(8):
        means = []
        for k in (1, 3, 10, 500):
            s = make_strategy("stochastic", seed=seed, n_candidates=k)
            pick = s.select(s.score(pool), 2)
            assert len(set(pick)) == 2
            means.append(h[pick].mean())
        assert means == sorted(means) and means[-1] == pytest.approx(0.375), (seed, means)
        by_seed[seed] = means[0]
    assert len(set(by_seed.values())) >= 3 and min(by_seed.values()) < 0.3, by_seed
    assert sorted(st.select(st.score(pool), 10)) == sorted(pool["case_id"])


def test_quotas_are_equal_and_give_unused_places_away():
    assert quotas(pd.Series(["A"] * 5 + ["B"] * 5), 4) == {"A": 2, "B": 2}
    assert quotas(pd.Series(["A"] * 5 + ["B"] * 1), 4) == {"A": 3, "B": 1}
    q = quotas(pd.Series(["A"] * 5 + ["B"] * 4 + ["C"] * 3), 4)
    assert sum(q.values()) == 4 and max(q.values()) - min(q.values()) <= 1
    assert quotas(pd.Series(["A", "B"]), 5) == {"A": 1, "B": 1}


def _embedded_pool():
    # G1: three points on a line, the middle one is the centre; G2: a tight pair and an outlier
    emb = {"a": [0.0, 0.0], "b": [1.0, 0.0], "c": [2.0, 0.0],
           "d": [10.0, 0.0], "e": [10.2, 0.0], "f": [14.0, 0.0], "L": [0.0, 0.1]}
    return _pool(), Context(embeddings={k: np.array(v) for k, v in emb.items()}, labelled=["L"])


def test_fair_attr_picks_the_most_representative_case_per_group():
    pool, ctx = _embedded_pool()
    s = make_strategy("fair-attr")
    # centres: G1 (1, 0) → b; G2 (11.4, 0) → e (distance 1.2) before d (1.4)
    assert s.select(s.score(pool, ctx), 2, ctx) == ["b", "e"]


def test_fair_poly_is_greedy_k_centre_from_the_labelled_set():
    pool, ctx = _embedded_pool()
    s = make_strategy("fair-poly")
    # G1 (quota 1): farthest from the labelled L (0, 0.1) is c; G2: farthest from {L} is f
    assert s.select(s.score(pool, ctx), 2, ctx) == ["c", "f"]
    # quota 2 in G2: after f, the farthest from {L, f} is d (10 from L, 4 from f)
    four = s.select(s.score(pool, ctx), 4, ctx)
    assert four[2:] == ["f", "d"]


def test_fair_ap_balances_both_criteria_and_fair_base_is_random_per_quota():
    pool, ctx = _embedded_pool()
    rep_only = make_strategy("fair-ap", lam=1.0)
    div_only = make_strategy("fair-ap", lam=0.0)
    assert rep_only.select(rep_only.score(pool, ctx), 2, ctx) == make_strategy("fair-attr").select(
        pool.assign(score=0.0), 2, ctx)
    assert div_only.select(div_only.score(pool, ctx), 2, ctx) == ["c", "f"]
    base = make_strategy("fair-base", seed=1)
    pick = base.select(base.score(pool, ctx), 4, ctx)
    assert sorted(pool.set_index("case_id").loc[pick, "group"]) == ["G1", "G1", "G2", "G2"]
    with pytest.raises(ValueError, match="needs embeddings"):
        rep_only.select(rep_only.score(pool), 2, Context())


def test_every_strategy_returns_a_batch_of_distinct_pool_cases():
    pool, ctx = _embedded_pool()
    ctx.labelled_dice = pd.DataFrame({"group": ["G1", "G2"], "dice": [0.6, 0.8]})
    for name in STRATEGIES:
        s = make_strategy(name, seed=0)
        pick = s.select(s.score(pool, ctx), 3, ctx)
        assert len(pick) == len(set(pick)) == 3 and set(pick) <= set(pool["case_id"]), name
        assert not math.isnan(s.score(pool, ctx)["score"].sum()), name
