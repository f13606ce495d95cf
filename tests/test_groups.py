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
