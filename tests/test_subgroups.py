"""Divergent-subgroup discovery checked against a pandas hand computation."""

import itertools

import numpy as np
import pandas as pd
import pytest

from napari_fairseg.metrics import discover_subgroups, intersection_table


def welch_t_vs_all(x, allv):
    """DivExplorer's statistic: |mean_S − mean_all| / sqrt(var_S/n_S + var_all/n_all), population variances."""
    return abs(x.mean() - allv.mean()) / np.sqrt(x.var() / len(x) + allv.var() / len(allv))


def test_discovery_matches_hand_computation(rng):
    n = 400
    df = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "site": rng.choice(["s1", "s2", "s3"], n)})
    df["dice"] = 0.85 - 0.2 * ((df["sex"] == "F") & (df["site"] == "s2")) + rng.normal(0, 0.03, n)
    found = discover_subgroups(df, "dice", ["sex", "site"], min_support=0.05).set_index("subgroup")
    overall = df["dice"].mean()
    expected = 0
    for k in (1, 2):
        for combo in itertools.combinations(["sex", "site"], k):
            for values in itertools.product(*(sorted(df[c].unique()) for c in combo)):
                mask = np.logical_and.reduce([df[c] == v for c, v in zip(combo, values, strict=True)])
                if mask.mean() < 0.05:
                    continue
                expected += 1
                key = ", ".join(sorted(f"{c}={v}" for c, v in zip(combo, values, strict=True)))
                row = found.loc[key]
                x = df.loc[mask, "dice"].to_numpy()
                assert row["n"] == mask.sum()
                assert row["mean"] == pytest.approx(x.mean())
                assert row["divergence"] == pytest.approx(x.mean() - overall)
                assert row["t"] == pytest.approx(welch_t_vs_all(x, df["dice"].to_numpy()), rel=1e-6)
    assert len(found) == expected
    assert found.index[0] == "sex=F, site=s2"  # worst first


def test_discovery_handles_unknowns_nan_outcomes_and_max_length(rng):
    df = pd.DataFrame({"a": ["x", None, "y", "x"] * 10, "b": ["p", "q"] * 20, "dice": [0.5, 0.9, np.nan, 0.7] * 10})
    found = discover_subgroups(df, "dice", ["a", "b"], min_support=0.1, max_length=1)
    assert set(found["length"]) == {1}
    assert "a=unknown" in set(found["subgroup"])
    assert found["n"].max() <= 30  # the 10 NaN-outcome cases are left out
    with pytest.raises(ValueError, match="min_support"):
        discover_subgroups(df, "dice", ["a"], min_support=0)


def test_intersection_table_keeps_empty_cells_and_unknowns():
    v = [1.0, 0.5, 0.0, 0.25]
    mean, count = intersection_table(v, ["r1", "r1", "r2", None], ["c1", "c2", "c1", "c1"])
    assert list(mean.index) == ["r1", "r2", "unknown"] and list(mean.columns) == ["c1", "c2"]
    assert mean.loc["r1", "c2"] == 0.5 and count.loc["r2", "c2"] == 0 and np.isnan(mean.loc["r2", "c2"])
    assert count.loc["unknown", "c1"] == 1


def test_intersection_table_lists_every_level_with_unknown_last_even_without_a_metric():
    # level "z" of a and "q" of b occur only in cases without a metric (None): their cells stay, empty
    v = [1.0, 0.5, None, 0.25, 0.75]
    a = ["x", "x", "z", None, "x"]
    b = ["p", None, "q", "p", None]
    mean, count = intersection_table(v, a, b)
    assert list(mean.index) == ["x", "z", "unknown"] and list(mean.columns) == ["p", "q", "unknown"]
    assert list(count.index) == ["x", "z", "unknown"] and list(count.columns) == ["p", "q", "unknown"]
    hand = pd.DataFrame({"v": v, "a": a, "b": b}).fillna({"a": "unknown", "b": "unknown"}).dropna(subset=["v"])
    for (ra, cb), g in hand.groupby(["a", "b"]):
        assert mean.loc[ra, cb] == pytest.approx(g["v"].mean()) and count.loc[ra, cb] == len(g)
    assert count.loc["x", "unknown"] == 2 and mean.loc["x", "unknown"] == pytest.approx(0.625)
    assert count.loc["z"].tolist() == [0, 0, 0] and mean.loc["z"].isna().all() and count["q"].sum() == 0
    assert all(dt == np.int64 for dt in count.dtypes) and all(dt == np.float64 for dt in mean.dtypes)


def test_discovery_defaults_support_bounds_and_items(rng):
    n = 200
    df = pd.DataFrame({"age": rng.choice(["<=40", "41-60", ">60"], n), "sex": ["F"] * 195 + ["M"] * 5})
    df["dice"] = rng.uniform(0.5, 1.0, n)
    found = discover_subgroups(df, "dice", ["age", "sex"])  # min_support 0.05 by default, no items column
    assert list(found.columns) == ["subgroup", "length", "support", "n", "mean", "divergence", "t"]
    assert "sex=M" not in set(found["subgroup"]) and found["support"].min() >= 0.05  # 5 / 200 = 0.025
    assert found["n"].dtype == np.int64 and found["length"].dtype == np.int64  # counts, not floats
    low = discover_subgroups(df, "dice", ["age", "sex"], min_support=0.02, with_items=True)
    assert list(low.columns)[-1] == "items"
    items = dict(zip(low["subgroup"], low["items"], strict=True))
    assert items["sex=M"] == (("sex", "M"),)
    assert items["age=<=40, sex=F"] == (("age", "<=40"), ("sex", "F"))  # a value may itself hold "="
    row = low.set_index("subgroup").loc["age=<=40, sex=F"]
    mask = (df["age"] == "<=40") & (df["sex"] == "F")
    assert row["n"] == mask.sum() and row["mean"] == pytest.approx(df.loc[mask, "dice"].mean())
    # min_support is a fraction in (0, 1]; 1 keeps only items every case shares
    every = discover_subgroups(df.assign(site="s1"), "dice", ["site", "sex"], min_support=1.0)
    assert every["subgroup"].tolist() == ["site=s1"] and every["n"].tolist() == [n]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="min_support must be in"):
            discover_subgroups(df, "dice", ["age"], min_support=bad)
