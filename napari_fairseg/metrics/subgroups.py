"""Intersectional tables and automatic divergent-subgroup discovery (METHODS.md §3).

Discovery enumerates every conjunction of ``attribute=value`` items with support ≥
``min_support`` through the DivExplorer library and reports each subgroup's mean, divergence
(mean − overall; negative = worse) and Welch t against the whole cohort.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .groups import UNKNOWN


def intersection_table(values, a, b) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and count of a metric per cell of attribute ``a`` × attribute ``b``.

    Unknown values form an explicit ``unknown`` row / column; every combination of levels is
    present, an empty cell has mean NaN and count 0.

    Returns
    -------
    mean, count : pandas.DataFrame
        Indexed by the levels of ``a``, columns the levels of ``b``.
    """
    frame = pd.DataFrame({
        "v": np.asarray(values, dtype=float),
        "a": pd.Series(a).reset_index(drop=True).astype("string").fillna(UNKNOWN),
        "b": pd.Series(b).reset_index(drop=True).astype("string").fillna(UNKNOWN),
    }).dropna(subset=["v"])

    def levels(s: pd.Series) -> list[str]:
        found = sorted(set(s) - {UNKNOWN})
        return found + ([UNKNOWN] if UNKNOWN in set(s) else [])

    rows = levels(pd.Series(pd.Series(a).astype("string").fillna(UNKNOWN)))
    cols = levels(pd.Series(pd.Series(b).astype("string").fillna(UNKNOWN)))
    grouped = frame.groupby(["a", "b"])["v"]
    mean = grouped.mean().unstack().reindex(index=rows, columns=cols)
    count = grouped.size().unstack().reindex(index=rows, columns=cols).fillna(0).astype(int)
    return mean, count


def intersection_cells(case_ids, a, b) -> dict[tuple[str, str], list[str]]:
    """The case ids in each cell of attribute ``a`` × attribute ``b`` (as :func:`intersection_table`
    labels them: unknown values under ``unknown``), in input order; empty cells are absent."""
    frame = pd.DataFrame({
        "id": pd.Series(case_ids).reset_index(drop=True).astype(str),
        "a": pd.Series(a).reset_index(drop=True).astype("string").fillna(UNKNOWN),
        "b": pd.Series(b).reset_index(drop=True).astype("string").fillna(UNKNOWN),
    })
    return {(str(ra), str(cb)): g["id"].tolist() for (ra, cb), g in frame.groupby(["a", "b"], sort=False)}


def discover_subgroups(table: pd.DataFrame, outcome: str, attributes: Sequence[str], *,
                       min_support: float = 0.05, max_length: int | None = None,
                       with_items: bool = False) -> pd.DataFrame:
    """Divergent subgroups of a per-case outcome, found with DivExplorer.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per case with the (discrete) attribute columns and the outcome column.
    outcome : str
        Quantitative outcome column (e.g. ``dice_cup``). Cases with NaN outcome are left out.
    attributes : sequence of str
        Discrete attribute columns; missing values become the item ``attr=unknown``.
    min_support : float
        Minimum fraction of cases in a subgroup.
    max_length : int, optional
        Keep conjunctions of at most this many items.
    with_items : bool
        Add an ``items`` column: the subgroup as a tuple of ``(attribute, value)`` pairs (values
        as strings, missing ones as ``unknown``), for matching cases to subgroups.

    Returns
    -------
    pandas.DataFrame
        ``subgroup`` (readable, items sorted), ``length``, ``support``, ``n``, ``mean``,
        ``divergence`` and ``t`` (Welch), sorted by divergence (worst first). The empty
        itemset (the whole cohort) is not listed.
    """
    from divexplorer import DivergenceExplorer

    if not 0 < min_support <= 1:
        raise ValueError(f"min_support must be in (0, 1], got {min_support}")
    data = table[[*attributes, outcome]].copy()
    data = data[data[outcome].notna()].reset_index(drop=True)
    cols = ["subgroup", "length", "support", "n", "mean", "divergence", "t"] + (["items"] if with_items else [])
    if data.empty:
        return pd.DataFrame(columns=cols)
    for att in attributes:
        data[att] = data[att].astype("string").fillna(UNKNOWN).astype(str)
    data[outcome] = data[outcome].astype(float)
    found = DivergenceExplorer(data).get_pattern_divergence(
        min_support=min_support, quantitative_outcomes=[outcome], attributes=list(attributes))
    found = found[found["length"] > 0]
    if max_length is not None:
        found = found[found["length"] <= max_length]
    out = pd.DataFrame({
        "subgroup": found["itemset"].map(lambda s: ", ".join(sorted(s))),
        "length": found["length"].astype(int),
        "support": found["support"].astype(float),
        "n": found["support_count"].astype(int),
        "mean": found[outcome].astype(float),
        "divergence": found[f"{outcome}_div"].astype(float),
        "t": found[f"{outcome}_t"].astype(float),
        "items": found["itemset"].map(lambda s: tuple(sorted(tuple(i.split("=", 1)) for i in s))),
    })
    return out.sort_values(["divergence", "length", "subgroup"]).reset_index(drop=True)[cols]
