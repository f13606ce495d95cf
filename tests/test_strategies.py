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


def test_documented_defaults_of_make_strategy():
    s = make_strategy("fair-ap")
    assert (s.n_candidates, s.lam) == (200, 0.5)
    # the default seed is 0: a run without a seed repeats seed 0's random picks
    pool = _pool()
    default, zero = make_strategy("random"), make_strategy("random", seed=0)
    assert default.score(pool)["score"].tolist() == zero.score(pool)["score"].tolist()


def test_wle_weights_stay_finite_for_an_extreme_outlier_group():
    # one G1 case at Dice 0 among n − 1 G2 cases at Dice 1: z_G1 = sqrt(n − 1), z_G2 = −1/sqrt(n − 1)
    # (by hand); with n = 130 001, exp(z_G1) alone is ~1e156 and exp(2·z_G1) overflows a double
    n = 130_001
    lab = pd.DataFrame({"group": ["G1"] + ["G2"] * (n - 1), "dice": [0.0] + [1.0] * (n - 1)})
    w = wle_group_weights(lab, ["G1", "G2"])
    gap = math.sqrt(n - 1) + 1 / math.sqrt(n - 1)
    assert w["G2"] == pytest.approx(math.exp(-gap) / (1 + math.exp(-gap)), rel=1e-6, abs=0)
    assert w["G1"] == pytest.approx(1.0)


def test_wle_weights_ignore_other_missing_columns_of_the_labelled_table():
    # validate() tables carry e.g. HD95, NaN for an empty prediction: that case's Dice still counts
    lab = pd.DataFrame({"group": ["G1", "G1", "G2", "G2"], "dice": [0.5, 0.7, 0.9, 0.9],
                        "hd95": [np.nan, 3.0, 2.0, 1.0]})
    mean, sd = 0.75, np.std([0.5, 0.7, 0.9, 0.9])
    e = np.exp([(mean - 0.6) / sd, (mean - 0.9) / sd])
    w = wle_group_weights(lab, ["G1", "G2"])
    np.testing.assert_allclose([w["G1"], w["G2"]], e / e.sum())


def test_scored_table_columns_for_non_string_groups_and_neutral_weights():
    pool = _pool().assign(group=[1, 1, 1, 2, 2, 2])  # e.g. a numeric site code
    loc = make_strategy("localized")
    scored = loc.score(pool)
    assert scored["group"].tolist() == ["1"] * 3 + ["2"] * 3
    assert scored["group_weight"].tolist() == [1.0] * 6  # only WLE weights groups
    assert scored["score"].dtype == np.float64
    lab = pd.DataFrame({"group": [1, 1, 2, 2], "dice": [0.5, 0.7, 0.9, 0.9]})
    wle = make_strategy("wle").score(pool, Context(labelled_dice=lab))
    w = wle_group_weights(lab.assign(group=lab["group"].astype(str)), ["1", "2"])
    assert wle["group_weight"].tolist() == [w["1"]] * 3 + [w["2"]] * 3
    # a score column read back as text (object dtype) is still ranked as numbers
    text = pool.assign(masked_entropy=pool["masked_entropy"].astype(str).astype(object))
    assert loc.score(text)["score"].dtype == np.float64


def test_ties_go_to_the_smaller_case_id_and_a_batch_of_one_is_allowed():
    pool = _pool().assign(masked_entropy=0.3)
    loc = make_strategy("localized")
    assert loc.select(loc.score(pool), 2) == ["a", "b"]
    assert loc.select(loc.score(_pool()), 1) == ["a"]
    with pytest.raises(ValueError, match="batch must be >= 1"):
        loc.select(loc.score(_pool()), 0)


@pytest.mark.parametrize("name", ["localized", "wle"])
def test_missing_pool_score_error_names_the_strategy(name):
    s = make_strategy(name)
    with pytest.raises(ValueError, match=f"strategy '{name}' needs the pool score 'masked_entropy'"):
        s.score(_pool().drop(columns="masked_entropy"))


def test_random_scores_differ_per_case_and_only_fair_base_is_random():
    pool = _pool()
    for name in ("random", "fair-base"):
        score = make_strategy(name).score(pool)["score"]
        assert score.nunique() == len(pool) and score.between(0, 1).all(), name
    for name in ("fair-attr", "fair-poly", "fair-ap"):  # they rank in select; the score column stays 0
        assert make_strategy(name).score(pool)["score"].tolist() == [0.0] * len(pool), name
    assert not make_strategy("fair-base").needs_embeddings
    assert all(make_strategy(n).needs_embeddings for n in ("fair-attr", "fair-poly", "fair-ap"))


def test_fair_base_takes_each_quota_by_the_highest_score_without_embeddings():
    pool = _pool()
    base = make_strategy("fair-base", seed=3)
    scored = base.score(pool)
    pick = base.select(scored, 4)  # no context at all: fair-base needs no embeddings
    top = scored.groupby("group")["score"].nlargest(2).index.get_level_values(1)
    assert sorted(pick) == sorted(scored.loc[top, "case_id"])
    assert pick[:2] == scored[scored.group == "G1"].nlargest(2, "score")["case_id"].tolist()


def test_quotas_give_the_remainder_to_the_largest_then_alphabetically_first_group():
    # 4 places over A 2, B 5, C 3: one each, the remaining one to the largest group B
    assert quotas(pd.Series(["A"] * 2 + ["B"] * 5 + ["C"] * 3), 4) == {"A": 1, "B": 2, "C": 1}
    # equal sizes: alphabetical, whatever order the pool lists them in
    assert quotas(pd.Series(["B"] * 3 + ["A"] * 3), 3) == {"A": 2, "B": 1}
    # a partly filled group never takes more than it has: A 10, C 5, B 1, D 1 with 16 places →
    # 4 each (B and D give 3 back each), then 3 each to A and C (C has room for 1 only), then A
    assert quotas(pd.Series(["A"] * 10 + ["C"] * 5 + ["B", "D"]), 16) == {"A": 9, "C": 5, "B": 1, "D": 1}


def _line_context(points, labelled=()):
    emb = {k: np.array([float(v), 0.0]) for k, v in points.items()}
    pool = pd.DataFrame({"case_id": [k for k in points if k not in labelled], "group": "G1",
                         "masked_entropy": 0.1})
    return pool, Context(embeddings=emb, labelled=list(labelled))


def test_fair_poly_without_labelled_cases_starts_from_the_farthest_from_the_centre():
    # a −3, b 5, c 6: centre 8/3; distances 5.67, 2.33, 3.33 → a, then the farthest from a → c
    pool, ctx = _line_context({"a": -3, "b": 5, "c": 6})
    s = make_strategy("fair-poly")
    assert s.select(s.score(pool), 2, ctx) == ["a", "c"]


def test_fair_ap_trades_representativeness_against_diversity_by_hand():
    # a 0, b 4, c 6, labelled L at 6: centre 10/3. rep = −|x − centre| → unit: a 0, b 1, c 0.25;
    # div = distance to L → unit: a 1, b 1/3, c 0. λ = 0.5: a 0.5, b 0.667, c 0.125 → b
    pool, ctx = _line_context({"a": 0, "b": 4, "c": 6, "L": 6}, labelled=["L"])
    assert make_strategy("fair-ap").select(pool.assign(score=0.0), 1, ctx) == ["b"]
    assert make_strategy("fair-ap", lam=0.2).select(pool.assign(score=0.0), 1, ctx) == ["a"]  # 0.8 vs 0.47
    # fair-attr ignores λ: it ranks by representativeness alone (b), whatever --lam says
    assert make_strategy("fair-attr", lam=0.0).select(pool.assign(score=0.0), 1, ctx) == ["b"]


def test_fair_ap_on_equidistant_and_single_case_groups():
    # two cases equally far from their centre (rep constant → no information): diversity decides,
    # b is farther from the labelled L
    pool, ctx = _line_context({"a": 0, "b": 2, "L": -1}, labelled=["L"])
    assert make_strategy("fair-ap").select(pool.assign(score=0.0), 1, ctx) == ["b"]
    single, ctx1 = _line_context({"a": 0})
    assert make_strategy("fair-ap").select(single.assign(score=0.0), 1, ctx1) == ["a"]


def test_fair_quota_accepts_integer_embeddings():
    # uint8 feature vectors (e.g. thumbnails) must not wrap around when subtracted
    pool, ctx = _embedded_pool()
    ints = Context(embeddings={k: (np.asarray(v) * 10).astype(np.uint8) for k, v in ctx.embeddings.items()},
                   labelled=["L"])
    s = make_strategy("fair-poly")
    assert s.select(s.score(pool), 4, ints) == s.select(s.score(pool), 4, ctx)
