"""Group summaries against hand computations and transcriptions of the reference code."""

import statistics

import numpy as np
import pandas as pd
import pytest

from napari_fairseg.data.attributes import mamamia_age_group, normalise_menopause
from napari_fairseg.metrics import (
    bootstrap_ci,
    equity_summary,
    group_table,
    mamamia_scores,
    variance_fairness,
)
from napari_fairseg.metrics.groups import UNKNOWN


def fairseg_equity_scaled_perf(identity_wise_perf, overall_perf):
    """Harvard-FairSeg's equity_scaled_perf (transcribed): per-group lists, overall from all cases."""
    tmp = sum(abs(np.mean(g) - overall_perf) for g in identity_wise_perf)
    return overall_perf / (tmp + 1)


def test_es_dice_parity_with_fairseg_unknowns_in_overall_not_in_sum():
    dice = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.85])
    race = pd.Series(["A", "A", "B", "B", "C", None, None])
    e = equity_summary(dice, race)
    overall = dice.mean()  # unknowns included
    groups = [dice[:2], dice[2:4], dice[4:5]]
    assert e["overall"] == pytest.approx(overall)
    assert e["delta"] == pytest.approx(sum(abs(overall - g.mean()) for g in groups))
    assert e["es"] == pytest.approx(fairseg_equity_scaled_perf(groups, overall))
    assert (e["n"], e["n_unknown"], e["n_groups"], e["worst_group"]) == (7, 2, 3, "C")


@pytest.mark.parametrize("ddof,ref", [(1, statistics.stdev), (0, statistics.pstdev)])
def test_essp_std_variant_uses_the_requested_ddof(ddof, ref):
    dice = np.array([0.9, 0.7, 0.8, 0.4, 0.6])
    g = ["x", "x", "y", "z", "z"]
    means = [0.8, 0.8, 0.5]
    e = equity_summary(dice, g, ddof=ddof)
    assert e["essp_std"] == pytest.approx(dice.mean() / (1 + ref(means)))
    assert e["std_ddof"] == ddof


def test_variance_fairness_is_minus_sum_of_group_mean_variances():
    v = np.array([1.0, 0.0, 0.5, 0.5])
    attrs = {"a": ["p", "q", "p", "q"], "b": ["u", "u", "w", "w"]}
    # a: means 0.75 / 0.25 → var 0.0625; b: means 0.5 / 0.5 → 0
    assert variance_fairness(v, attrs) == pytest.approx(-0.0625)


def test_group_table_keeps_empty_groups_as_nan_and_lists_unknown():
    v = np.array([0.9, 0.8, np.nan, 0.4])
    t = group_table(v, ["a", "a", "a", None], categories=["a", "b"], min_size=2, n_boot=200)
    a, b, unk = (t.set_index("group").loc[k] for k in ("a", "b", "unknown"))
    assert a["n"] == 2 and a["n_nan"] == 1 and a["mean"] == pytest.approx(0.85) and not a["small"]
    assert b["n"] == 0 and np.isnan(b["mean"]) and b["small"]
    assert not unk["known"] and unk["mean"] == pytest.approx(0.4)
    assert a["ci_low"] <= a["mean"] <= a["ci_high"]


def test_bootstrap_ci_covers_the_mean_and_narrows_with_n(rng):
    small = bootstrap_ci(rng.normal(0.8, 0.1, 20), rng=np.random.default_rng(0))
    big = bootstrap_ci(rng.normal(0.8, 0.1, 2000), rng=np.random.default_rng(0))
    assert small[0] < 0.8 < small[1] or abs(np.mean(small) - 0.8) < 0.06
    assert big[0] < big[1] and (big[1] - big[0]) < (small[1] - small[0]) / 4


def official_mamamia(df):
    """The official scoring_task1.py fairness / performance logic, transcribed."""
    ps = 0.5 * (np.mean(df["DSC"]) + (1 - np.mean(df["NormHD"])))
    fs = {}
    for variable in ["age", "menopausal_status", "breast_density"]:
        d, h = [], []
        for _, grp in df.groupby(variable):
            d.append(grp["DSC"].mean())
            h.append(grp["NormHD"].mean())
        fs[variable] = 1 - 0.5 * ((max(d) - min(d)) + (max(h) - min(h)))
    avg = sum(fs.values()) / 3
    return ps, avg, 0.5 * ps + 0.5 * avg


def test_mamamia_scores_match_the_official_scorer(rng):
    n = 60
    raw = pd.DataFrame({
        "age": rng.integers(25, 90, n),
        "menopausal_status": rng.choice(["pre", "post", "peri", "postmenopausal", None], n),
        "breast_density": rng.choice(["a", "b", "c", "d", None], n),
        "DSC": rng.random(n), "NormHD": rng.random(n),
    })
    ref = raw.copy()
    ref["age"] = pd.cut(ref["age"], bins=[0, 40, 50, 60, 70, 100], labels=["0-40", "41-50", "51-60", "61-70", "71+"])
    ms = ref["menopausal_status"].fillna("unknown")
    ms = ms.apply(lambda x: "pre" if "peri" in x else x).apply(lambda x: "post" if "post" in x else x)
    ref["menopausal_status"] = ms.apply(lambda x: "pre" if "pre" in x else x)
    ps, fs, ts = official_mamamia(ref)
    ours = mamamia_scores(raw["DSC"], raw["NormHD"], {
        "age": mamamia_age_group(raw["age"]),
        "menopausal_status": normalise_menopause(raw["menopausal_status"]),
        "breast_density": raw["breast_density"],
    })
    assert ours["performance"] == pytest.approx(ps)
    assert ours["fairness"] == pytest.approx(fs)
    assert ours["total"] == pytest.approx(ts)


def test_menopause_and_age_bins():
    s = normalise_menopause(pd.Series(["peri", "postmenopausal", "premenopausal", None, "other"]))
    assert s.tolist() == ["pre", "post", "pre", "unknown", "other"]
    ages = mamamia_age_group(pd.Series([40, 40.5, 50, 61, 70, 71, 105, None]))
    assert ages.tolist()[:7] == ["0-40", "41-50", "41-50", "61-70", "61-70", "71+", "71+"]
    assert pd.isna(ages.iloc[7])


def scipy_percentile_ci(values, level=0.95, n_resamples=20000, seed=1):
    """Independent reference: scipy's percentile bootstrap CI of the mean."""
    from scipy.stats import bootstrap

    ci = bootstrap((np.asarray(values, dtype=float),), np.mean, method="percentile", n_resamples=n_resamples,
                   confidence_level=level, random_state=np.random.default_rng(seed)).confidence_interval
    return ci.low, ci.high


def test_bootstrap_ci_is_a_95_percent_percentile_bootstrap_like_scipy():
    # Monte-Carlo error of either side at 20,000 resamples is ~0.001 here; a 90 % interval would
    # sit ~0.007 inside the 95 % one on each side.
    v = np.clip(np.random.default_rng(7).normal(0.8, 0.12, 9), 0, 1)
    lo, hi = bootstrap_ci(v, n_boot=20000, rng=np.random.default_rng(0))  # documented default level
    ref_lo, ref_hi = scipy_percentile_ci(v)
    assert lo == pytest.approx(ref_lo, abs=0.003) and hi == pytest.approx(ref_hi, abs=0.003)
    lo90, hi90 = scipy_percentile_ci(v, level=0.90)
    assert lo < lo90 - 0.004 and hi > hi90 + 0.004  # the check above can tell 95 % from 90 %
    lo80, hi80 = bootstrap_ci(v, n_boot=20000, level=0.8, rng=np.random.default_rng(0))
    r80 = scipy_percentile_ci(v, level=0.8)
    assert (lo80, hi80) == pytest.approx(r80, abs=0.003)


def test_group_table_std_and_ci_per_group_against_independent_references():
    rng = np.random.default_rng(11)
    v = np.r_[np.clip(rng.normal(0.85, 0.05, 12), 0, 1), np.clip(rng.normal(0.6, 0.2, 7), 0, 1), np.nan]
    g = ["a"] * 12 + ["b"] * 7 + ["b"]
    t = group_table(v, g, n_boot=20000).set_index("group")  # default level and ddof
    for name, x in (("a", v[:12]), ("b", v[12:19])):
        row = t.loc[name]
        assert row["n"] == len(x) and row["mean"] == pytest.approx(statistics.fmean(x))
        assert row["std"] == pytest.approx(statistics.stdev(x))  # sample std, ddof = 1
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(scipy_percentile_ci(x), abs=0.004), name
    assert t.loc["b", "n_nan"] == 1 and bool(t.loc["b", "small"]) and not t.loc["a", "small"]


def test_equity_summary_gap_worst_group_and_variance_by_hand():
    dice = np.array([0.9, 0.95, 0.5, 0.6, 0.7, 0.8, 0.75, 0.2])
    race = ["A", "A", "B", "B", "C", "C", "C", None]
    means = {"A": 0.925, "B": 0.55, "C": 0.75}  # overall (unknown included) 0.675 ≠ any of these
    e = equity_summary(dice, race)
    assert e["gap"] == pytest.approx(0.925 - 0.55)  # max − min of the known group means
    assert e["worst_group"] == "B" and e["n_groups"] == 3 and e["n_unknown"] == 1
    assert e["group_variance"] == pytest.approx(statistics.pvariance(means.values()))
    assert e["essp_std"] == pytest.approx(dice.mean() / (1 + statistics.stdev(means.values())))


def test_group_statistics_at_their_edges():
    """Empty, all-NaN and one-case groups, no resampling, the shared random stream, the
    default small-group size and the table's columns: the cases real cohorts hit first."""
    assert all(np.isnan(bootstrap_ci([]))) and all(np.isnan(bootstrap_ci([np.nan, np.nan])))
    assert bootstrap_ci([0.7, np.nan]) == (0.7, 0.7)  # one value: its own interval
    assert all(np.isnan(bootstrap_ci([0.2, 0.4], n_boot=0)))  # no resample, no interval
    lo, hi = bootstrap_ci([0.2, 0.4], n_boot=1)
    assert lo == hi and min(abs(lo - m) for m in (0.2, 0.3, 0.4)) < 1e-12  # one resample's mean
    v = np.sqrt(np.arange(1.0, 41.0)) / 7  # 40 distinct values: resampled means rarely repeat
    assert bootstrap_ci(v) == bootstrap_ci(v, rng=np.random.default_rng(0))  # documented default stream
    assert bootstrap_ci(v) == bootstrap_ci(v)  # an audit is reproducible

    values = [0.5, 0.8, 0.12, 0.95, 0.33, 0.71, np.nan, 0.9, 0.1, 0.3, 0.6]
    groups = ["A", "A", "A", "A", "A", "A", "B", "C", "C", None, "C"]
    table = group_table(values, groups, n_boot=300, level=0.9).set_index("group")
    assert list(group_table([], [], n_boot=10).columns) == ["group", "known", "n", "n_nan", "mean", "std",
                                                            "ci_low", "ci_high", "small"]
    assert table.loc["unknown", "mean"] == 0.3 and np.isnan(table.loc["unknown", "std"])  # one case: no spread
    assert (table.loc["unknown", "ci_low"], table.loc["unknown", "ci_high"]) == (0.3, 0.3)
    assert table.loc["B", ["n", "n_nan"]].tolist() == [0, 1] and np.isnan(table.loc["B", "mean"])
    assert table.loc["C", "std"] == pytest.approx(statistics.stdev([0.9, 0.1, 0.6]))
    rng = np.random.default_rng(0)  # one stream shared by the groups in table order (A, then C resample)
    for name in table.index:
        x = np.array([v for v, g in zip(values, groups, strict=True) if (g if g is not None else UNKNOWN) == name])
        expected = bootstrap_ci(x[~np.isnan(x)], n_boot=300, level=0.9, rng=rng)
        np.testing.assert_allclose([table.loc[name, "ci_low"], table.loc[name, "ci_high"]], expected)
    ten = group_table(np.linspace(0, 1, 19), ["big"] * 10 + ["nine"] * 9, n_boot=10).set_index("group")
    assert not ten.loc["big", "small"] and ten.loc["nine", "small"]  # default min_size 10

    nothing = equity_summary([np.nan, np.nan], ["A", "B"])
    assert np.isnan(nothing["overall"]) and np.isnan(nothing["delta"]) and np.isnan(nothing["es"])
    assert np.isnan(nothing["gap"]) and nothing["worst_group"] is None and nothing["n"] == 0
    one = equity_summary([0.4, 0.6, np.nan], ["A", "A", "B"])  # B has no evaluated case: left out
    assert one["n_groups"] == 1 and one["delta"] == pytest.approx(0.0) and one["es"] == pytest.approx(0.5)
    assert np.isnan(one["essp_std"]) and one["group_variance"] == 0.0  # std of one mean: undefined (ddof 1)
    assert np.isnan(equity_summary([0.4, 0.6], ["A", "A"], var_ddof=1)["group_variance"])
    two = {"g": ["a", "a", "b", "b"]}
    v4 = [0.2, 0.4, 0.6, 1.0]  # group means 0.3 and 0.8
    assert variance_fairness(v4, two, ddof=1) == pytest.approx(-statistics.variance([0.3, 0.8]))
    assert variance_fairness(v4, two) == pytest.approx(-statistics.pvariance([0.3, 0.8]))


def test_small_groups_none_values_and_reported_settings_without_runtime_warnings():
    """Groups of 0, 1 and 2 cases, a case whose metric is None, an all-NaN metric, a variable with a
    single group: plain numbers or NaN, and no numpy 'mean of empty slice' warnings in the CLI output."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        values = [0.2, 0.6, 0.9, None, 0.5]  # None: undefined for that case, like NaN
        t = group_table(values, ["two", "two", "one", "one", None], categories=["none", "two"],
                        n_boot=50).set_index("group")
        assert list(t.index) == ["none", "two", "one", "unknown"]
        assert t.loc["two", "std"] == pytest.approx(statistics.stdev([0.2, 0.6]))  # two cases have a spread
        assert np.isnan(t.loc["one", "std"]) and t.loc["one", ["n", "n_nan"]].tolist() == [1, 1]
        assert t.loc["none", "n"] == 0 and np.isnan(t.loc["none", "mean"])
        assert bootstrap_ci([0.2, None, 0.4], n_boot=200) == bootstrap_ci([0.2, 0.4], n_boot=200)
        e = equity_summary(values, ["a", "a", "b", "b", "b"], ddof=0, var_ddof=1)
        assert e["overall"] == pytest.approx(statistics.fmean([0.2, 0.6, 0.9, 0.5])) and e["n"] == 4
        assert e["std_ddof"] == 0 and e["var_ddof"] == 1  # the variants used are named in the output
        assert e["group_variance"] == pytest.approx(statistics.variance([0.4, 0.7]))
        assert np.isnan(equity_summary([np.nan, np.nan], ["a", "b"])["overall"])
        # MAMA-MIA: a variable whose cases all share one group is perfectly fair (D = 0)
        s = mamamia_scores([0.8, 0.6], [0.1, 0.3], {"density": ["b", "b"], "age": ["0-40", "71+"]})
        assert s["per_variable"]["density"] == 1.0
        assert s["per_variable"]["age"] == pytest.approx(1 - 0.5 * (0.2 + 0.2))
        none = mamamia_scores([0.8, 0.6], [0.1, 0.3], {})
        assert np.isnan(none["fairness"]) and none["performance"] == pytest.approx(0.5 * (0.7 + 0.8))
