"""Group fairness summaries of a per-case metric (METHODS.md §2).

Conventions, chosen for parity with the Harvard-FairSeg reference code:

* ``overall`` is the mean over *all* evaluated cases, those with an unknown attribute too;
* Δ = Σ_g |overall − M_g| runs over the *known* groups only;
* a group with no evaluated case has mean NaN (never 0) and stays in the table;
* per-case NaN values (an undefined metric) are left out of means and counted in ``n_nan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

UNKNOWN = "unknown"


def _clean(values, groups) -> tuple[np.ndarray, pd.Series]:
    v = np.asarray(values, dtype=float)
    g = pd.Series(groups).reset_index(drop=True).astype("string")
    if len(v) != len(g):
        raise ValueError(f"values ({len(v)}) and groups ({len(g)}) differ in length")
    return v, g


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                 rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaN values dropped)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (np.nan, np.nan)
    if v.size == 1 or n_boot <= 0:
        return (float(v[0]), float(v[0])) if v.size == 1 else (np.nan, np.nan)
    rng = rng or np.random.default_rng(0)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def group_table(values, groups, *, categories: Sequence[str] | None = None, n_boot: int = 1000,
                level: float = 0.95, min_size: int = 10, seed: int = 0) -> pd.DataFrame:
    """Per-group mean, spread, count and bootstrap CI of a per-case metric.

    Parameters
    ----------
    values : array-like
        ``(N,)`` per-case metric (NaN = undefined for that case).
    groups : array-like
        ``(N,)`` group of each case; missing = unknown.
    categories : sequence of str, optional
        Groups to list even when they have no case (their mean is NaN).
    min_size : int
        Groups with fewer evaluated cases are flagged ``small``.

    Returns
    -------
    pandas.DataFrame
        Columns ``group, known, n, n_nan, mean, std, ci_low, ci_high, small``; the unknown
        group (if any case has one) comes last with ``known=False``.
    """
    v, g = _clean(values, groups)
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys([*(categories or []), *sorted(g.dropna().unique())]))
    rows = []
    for name, mask, known in [*((n, (g == n).fillna(False).to_numpy(), True) for n in names),
                              (UNKNOWN, g.isna().to_numpy(), False)]:
        if not known and not mask.any():
            continue
        x = v[mask]
        ok = x[~np.isnan(x)]
        lo, hi = bootstrap_ci(ok, n_boot=n_boot, level=level, rng=rng)
        rows.append({"group": name, "known": known, "n": int(ok.size), "n_nan": int(x.size - ok.size),
                     "mean": float(ok.mean()) if ok.size else np.nan,
                     "std": float(ok.std(ddof=1)) if ok.size > 1 else np.nan,
                     "ci_low": lo, "ci_high": hi, "small": bool(ok.size < min_size)})
    return pd.DataFrame(rows, columns=["group", "known", "n", "n_nan", "mean", "std", "ci_low", "ci_high", "small"])


def equity_summary(values, groups, *, ddof: int = 1, var_ddof: int = 0) -> dict:
    """Overall mean, Δ, ES-metric (ESSP), the std variant and the group variance.

    Parameters
    ----------
    values, groups : array-like
        ``(N,)`` per-case metric and group (missing = unknown).
    ddof : int
        Degrees of freedom of the std in the ESSP-std variant (FairSeg's code: 1; FairMedFM: 0).
    var_ddof : int
        Degrees of freedom of the variance over group means (variance fairness, seed 003 Eq. 1).

    Returns
    -------
    dict
        ``overall`` (mean over all cases, unknown group included), ``delta`` (Σ over known
        groups of |overall − M_g|), ``es`` = overall / (1 + Δ), ``essp_std`` = overall /
        (1 + std of group means, ``ddof``), ``group_variance``, ``gap`` (max − min group mean),
        ``worst_group``, ``n``, ``n_unknown``, ``n_groups``, and the ``ddof`` values used.
        Groups with no evaluated case are left out of Δ, std and variance.
    """
    v, g = _clean(values, groups)
    ok = ~np.isnan(v)
    overall = float(v[ok].mean()) if ok.any() else np.nan
    known = g.notna().to_numpy() & ok
    means = pd.Series(v[known]).groupby(g[known].to_numpy()).mean()
    delta = float(np.abs(overall - means).sum()) if len(means) else np.nan
    std = float(means.std(ddof=ddof)) if len(means) > ddof else np.nan
    var = float(means.var(ddof=var_ddof)) if len(means) > var_ddof else np.nan
    return {
        "overall": overall,
        "delta": delta,
        "es": overall / (1 + delta) if len(means) else np.nan,
        "essp_std": overall / (1 + std) if np.isfinite(std) else np.nan,
        "std_ddof": ddof,
        "group_variance": var,
        "var_ddof": var_ddof,
        "gap": float(means.max() - means.min()) if len(means) else np.nan,
        "worst_group": str(means.idxmin()) if len(means) else None,
        "n": int(ok.sum()),
        "n_unknown": int((g.isna().to_numpy() & ok).sum()),
        "n_groups": int(len(means)),
    }


def variance_fairness(values, groups_by_attribute: Mapping[str, Sequence], *, ddof: int = 0) -> float:
    """Seed 003 Eq. 1: −Σ over attributes of the variance of the group means (0 is best)."""
    total = 0.0
    for groups in groups_by_attribute.values():
        total += equity_summary(values, groups, var_ddof=ddof)["group_variance"]
    return -total


def mamamia_scores(dsc, norm_hd, variables: Mapping[str, Sequence]) -> dict:
    """The MAMA-MIA challenge scores, as the official scorer defines them.

    Parameters
    ----------
    dsc, norm_hd : array-like
        ``(N,)`` per-case Dice (both-empty = 0 in the scorer) and NormHD.
    variables : mapping of str to array-like
        Fairness variables (already discrete: age group, menopausal status, breast density).
        Missing values are left out of that variable's groups, as ``DataFrame.groupby`` does.

    Returns
    -------
    dict
        ``performance`` PS = 0.5·(mean DSC + 1 − mean NormHD), ``fairness`` FS = mean over
        variables of 1 − 0.5·(D_DSC + D_NormHD) with D = max − min of the group means,
        ``total`` TS = 0.5·PS + 0.5·FS, and ``per_variable`` fairness.
    """
    d, h = np.asarray(dsc, dtype=float), np.asarray(norm_hd, dtype=float)
    ps = 0.5 * (d.mean() + (1 - h.mean()))
    per_var = {}
    for name, groups in variables.items():
        frame = pd.DataFrame({"g": pd.Series(groups).reset_index(drop=True), "d": d, "h": h})
        means = frame.groupby("g", dropna=True, observed=True)[["d", "h"]].mean()
        if len(means) == 0:
            per_var[name] = np.nan
            continue
        spread = means.max() - means.min()
        per_var[name] = float(1 - 0.5 * (spread["d"] + spread["h"]))
    fs = float(np.mean(list(per_var.values()))) if per_var else np.nan
    return {"performance": float(ps), "fairness": fs, "total": float(0.5 * ps + 0.5 * fs),
            "per_variable": per_var}
