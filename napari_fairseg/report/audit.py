"""The fairness audit of a cohort's predictions: a job that computes, and files that report.

``audit_job`` yields progress per case, then per attribute, and returns an :class:`Audit`;
``write_audit`` turns it into ``per_case.csv``, ``groups.csv``, ``subgroups.csv``,
``summary.json``, heatmap PNGs and ``report.html`` (schema in the README).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..data.arrays import load_case, load_prediction
from ..data.attributes import bin_continuous
from ..data.manifest import Cohort
from ..errors import InputDataError
from ..metrics.distance import hausdorff95, norm_hd
from ..metrics.groups import equity_summary, group_table, mamamia_scores, variance_fairness
from ..metrics.overlap import overlap_metrics
from ..metrics.subgroups import discover_subgroups, intersection_table
from ..options import AUDIT, HD_MODES
from ..progress import Job, Progress

#: Columns of ``groups.csv`` (also when the cohort has no attributes and the table is empty).
GROUP_COLUMNS = ("attribute", "metric", "group", "known", "n", "n_nan", "mean", "std", "ci_low", "ci_high", "small")


@dataclass(frozen=True)
class AuditConfig:
    """Options of an audit.

    Attributes
    ----------
    attributes : tuple of str
        Attributes to audit (default: all the cohort has).
    split : str or None
        Audit only this split (``None``: every case with a label and a prediction).
    hd_mode : {"mm", "voxel", "none"}
        HD95 in mm (voxel spacing), in voxels (MAMA-MIA parity), or not computed.
    empty_score : float
        Dice / IoU where prediction and truth are both empty.
    min_support : float
        Minimum subgroup support for discovery.
    max_length : int
        Longest conjunction of attribute values in discovered subgroups.
    min_group_size : int
        Groups / cells with fewer cases are flagged as small.
    n_boot : int
        Bootstrap resamples for group confidence intervals.
    std_ddof : int
        ddof of the std in the ESSP-std variant.
    mamamia : bool or None
        Compute the MAMA-MIA scores (default: for MAMA-MIA cohorts).
    heatmap_attributes : int
        Intersectional heatmaps are drawn for every pair among the first this-many attributes.
    """

    attributes: tuple[str, ...] = ()
    split: str | None = None
    hd_mode: str = AUDIT["hd_mode"]
    empty_score: float = AUDIT["empty_score"]
    min_support: float = AUDIT["min_support"]
    max_length: int = AUDIT["max_length"]
    min_group_size: int = AUDIT["min_group_size"]
    n_boot: int = AUDIT["n_boot"]
    std_ddof: int = AUDIT["std_ddof"]
    mamamia: bool | None = None
    seed: int = AUDIT["seed"]
    heatmap_attributes: int = AUDIT["heatmap_attributes"]

    def __post_init__(self):
        if self.hd_mode not in HD_MODES:
            raise ValueError(f"hd_mode must be one of {HD_MODES}, got {self.hd_mode!r}")
        if not 0 < self.min_support <= 1:
            raise ValueError(f"min_support must be in (0, 1], got {self.min_support}")


@dataclass
class Audit:
    """Results of an audit (tables as pandas DataFrames)."""

    cohort_name: str
    classes: dict[str, tuple[int, ...]]
    attributes: list[str]
    per_case: pd.DataFrame
    groups: pd.DataFrame
    subgroups: pd.DataFrame
    summary: dict
    heatmaps: dict[tuple[str, str], tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.per_case.columns if c.split("_", 1)[0] in ("dice", "iou", "hd95", "normhd")]


def audit_job(cohort: Cohort, predictions: str | Path, config: AuditConfig = AuditConfig()) -> Job[Audit]:
    """Evaluate ``predictions`` against the cohort's labels, per case, group and subgroup.

    Cases without a label are skipped (noted); a labelled case without a prediction is an
    error naming the expected file. Stages: per-case metrics, then per-attribute group tables,
    then subgroup discovery per Dice metric; each yields its progress.
    """
    attrs, cases, skipped = _audited_cases(cohort, config)
    metrics = yield from _metrics_stage(cohort, predictions, cases["case_id"].tolist(), config)
    per_case = cases[["case_id", "split", *attrs]].merge(metrics, on="case_id", how="left")
    metric_cols = [c for c in metrics.columns if c.split("_", 1)[0] in ("dice", "iou", "hd95", "normhd")]
    discrete = {a: bin_continuous(per_case[a], name=a).reset_index(drop=True) for a in attrs}
    groups, summary_attrs = yield from _groups_stage(per_case, discrete, attrs, metric_cols, config)
    dice_cols = [c for c in metric_cols if c.startswith("dice_")]
    subgroups = yield from _subgroups_stage(per_case, discrete, attrs, dice_cols, config)
    heatmaps = {(a, b): intersection_table(per_case[dice_cols[0]], discrete[a], discrete[b])
                for a, b in itertools.combinations(attrs[: config.heatmap_attributes], 2)}
    summary = _summary(cohort, config, per_case, discrete, metric_cols, summary_attrs, subgroups, len(skipped))
    yield Progress("done", 1, 1, "audit complete")
    return Audit(cohort.name, cohort.classes, attrs, per_case, groups, subgroups, summary, heatmaps, skipped)


def _audited_cases(cohort: Cohort, config: AuditConfig) -> tuple[list[str], pd.DataFrame, list[str]]:
    """The attributes to audit, the labelled cases to audit and the unlabelled ones skipped."""
    attrs = list(config.attributes) or cohort.attributes
    unknown = [a for a in attrs if a not in cohort.cases.columns]
    if unknown:
        raise InputDataError(cohort.source, f"unknown attribute(s) {unknown}; the cohort has {cohort.attributes}")
    cases = cohort.cases
    if config.split is not None:
        cases = cases[cases["split"] == config.split]
    skipped = cases.loc[cases["label"].isna(), "case_id"].tolist()
    cases = cases[cases["label"].notna()]
    if cases.empty:
        raise InputDataError(cohort.source, "no labelled case to audit"
                             + (f" in split {config.split!r}" if config.split else ""))
    return attrs, cases, skipped


def _metrics_stage(cohort: Cohort, predictions: str | Path, case_ids: list[str],
                   config: AuditConfig) -> Job[pd.DataFrame]:
    """Per-case Dice, IoU, emptiness and (unless ``hd_mode`` is ``none``) HD95 and NormHD of
    every class; one ``metrics`` event per case."""
    rows = []
    for i, cid in enumerate(case_ids):
        rows.append(_case_metrics(cohort, predictions, cid, config))
        yield Progress("metrics", i + 1, len(case_ids), cid)
    return pd.DataFrame(rows)


def _case_metrics(cohort: Cohort, predictions: str | Path, case_id: str, config: AuditConfig) -> dict:
    """One row of ``per_case.csv`` (without the split and the attributes)."""
    case = load_case(cohort, case_id)
    try:
        pred = load_prediction(cohort, predictions, case)
    except InputDataError as exc:
        if config.split is None and "no prediction for case" in str(exc):  # predicted one split, audited all
            raise InputDataError(exc.source, f"{exc.problem}; if the predictions cover one split only, audit that "
                                 "split (--split test)") from None
        raise
    m = overlap_metrics(pred[None], case.label[None], cohort.classes, empty_score=config.empty_score)
    row = {"case_id": case_id}
    for name, values in cohort.classes.items():
        row[f"dice_{name}"] = float(m[f"dice_{name}"][0])
        row[f"iou_{name}"] = float(m[f"iou_{name}"][0])
        row[f"empty_{name}"] = bool(m[f"tp_{name}"][0] + m[f"fp_{name}"][0] + m[f"fn_{name}"][0] == 0)
        if config.hd_mode != "none":
            spacing = case.spacing if config.hd_mode == "mm" else None
            hd = hausdorff95(np.isin(pred, values), np.isin(case.label, values), spacing=spacing)
            row[f"hd95_{name}"] = hd
            row[f"normhd_{name}"] = float(norm_hd(hd))
    return row


def _groups_stage(per_case: pd.DataFrame, discrete: dict[str, pd.Series], attrs: list[str],
                  metric_cols: list[str], config: AuditConfig) -> Job[tuple[pd.DataFrame, dict]]:
    """Each attribute's group table of every metric (``groups.csv``) and equity summary (the
    summary's ``attributes``); one ``groups`` event per attribute."""
    group_frames, summary_attrs = [], {}
    for j, a in enumerate(attrs):
        summary_attrs[a] = {"binned": not per_case[a].astype("string").equals(discrete[a]), "metrics": {}}
        for mc in metric_cols:
            # HD95 can be infinite (one empty mask): such means are inf, honestly reported.
            values = per_case[mc].to_numpy(dtype=float)
            t = group_table(values, discrete[a], n_boot=config.n_boot, min_size=config.min_group_size,
                            seed=config.seed)
            t.insert(0, "metric", mc)
            t.insert(0, "attribute", a)
            group_frames.append(t)
            summary_attrs[a]["metrics"][mc] = _jsonable(equity_summary(values, discrete[a], ddof=config.std_ddof))
        yield Progress("groups", j + 1, len(attrs), a)
    groups = pd.concat(group_frames, ignore_index=True) if group_frames else pd.DataFrame(columns=GROUP_COLUMNS)
    return groups, summary_attrs


def _subgroups_stage(per_case: pd.DataFrame, discrete: dict[str, pd.Series], attrs: list[str],
                     dice_cols: list[str], config: AuditConfig) -> Job[pd.DataFrame]:
    """Divergent subgroups of every Dice metric (``subgroups.csv``); one ``subgroups`` event per metric."""
    table = pd.DataFrame({**discrete, **{c: per_case[c].reset_index(drop=True) for c in dice_cols}})
    sub_frames = []
    for k, mc in enumerate(dice_cols):
        found = discover_subgroups(table, mc, attrs, min_support=config.min_support,
                                   max_length=config.max_length) if attrs else pd.DataFrame()
        if len(found):
            found.insert(0, "metric", mc)
            found["small"] = found["n"] < config.min_group_size
            sub_frames.append(found)
        yield Progress("subgroups", k + 1, len(dice_cols), mc)
    return pd.concat(sub_frames, ignore_index=True) if sub_frames else pd.DataFrame(
        columns=["metric", "subgroup", "length", "support", "n", "mean", "divergence", "t", "small"])


def _summary(cohort: Cohort, config: AuditConfig, per_case: pd.DataFrame, discrete: dict[str, pd.Series],
             metric_cols: list[str], summary_attrs: dict, subgroups: pd.DataFrame, n_skipped: int) -> dict:
    """``summary.json``: the run, overall metrics, per-attribute equity, variance fairness, the
    worst subgroups and (for MAMA-MIA, or when asked) the MAMA-MIA scores."""
    summary = {
        "napari_fairseg_version": __version__,
        "cohort": cohort.name,
        "kind": cohort.kind,
        "classes": {k: list(v) for k, v in cohort.classes.items()},
        "split": config.split,
        "n_cases": int(len(per_case)),
        "n_skipped_unlabelled": n_skipped,
        "config": {"hd_mode": config.hd_mode, "empty_score": config.empty_score,
                   "min_support": config.min_support, "max_length": config.max_length,
                   "min_group_size": config.min_group_size, "n_boot": config.n_boot,
                   "std_ddof": config.std_ddof, "var_ddof": 0},
        "overall": {mc: _num(np.nanmean(per_case[mc].to_numpy(dtype=float))) for mc in metric_cols},
        "attributes": summary_attrs,
        "variance_fairness": {mc: _num(variance_fairness(per_case[mc].to_numpy(dtype=float), discrete))
                              for mc in metric_cols} if discrete else {},
        "worst_subgroups": _jsonable(subgroups.head(10).to_dict(orient="records")),
    }
    if config.mamamia or (config.mamamia is None and cohort.kind == "mamamia"):
        summary["mamamia"] = {}
        for name in cohort.classes:
            # The scorer gives Dice 0 when both masks are empty; NormHD needs voxel HD95.
            dsc = np.where(per_case[f"empty_{name}"], 0.0, per_case[f"dice_{name}"])
            if f"normhd_{name}" not in per_case:
                continue
            summary["mamamia"][name] = _jsonable(mamamia_scores(dsc, per_case[f"normhd_{name}"], discrete))
        summary["mamamia_hd_mode"] = config.hd_mode
    return summary


def _num(x):
    x = float(x)
    return None if math.isnan(x) else ("inf" if math.isinf(x) else x)


def _jsonable(obj):
    """NaN → null and inf → "inf", so that summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _num(obj)
    return obj


def write_audit(audit: Audit, out_dir: str | Path) -> dict[str, Path]:
    """Write the audit's tables, summary, heatmaps and HTML report; return the paths by name.

    Heatmap file names use a file-safe form of the attribute names (:func:`~..data.atomic.file_stem`),
    and every file is checked to land inside ``out_dir``.
    """
    from ..data.atomic import (
        file_stem,
        mark_output,
        path_inside,
        write_csv_atomic,
        write_text_atomic,
    )
    from .figures import save_heatmap
    from .html import render_report

    out = mark_output(out_dir)  # its PNG heatmaps are never read back as images of a cohort
    paths = {
        "per_case": write_csv_atomic(out / "per_case.csv", audit.per_case),
        "groups": write_csv_atomic(out / "groups.csv", audit.groups),
        "subgroups": write_csv_atomic(out / "subgroups.csv", audit.subgroups),
        "summary": write_text_atomic(out / "summary.json", json.dumps(audit.summary, indent=2, allow_nan=False) + "\n"),
    }
    primary = next(c for c in audit.per_case.columns if c.startswith("dice_"))
    heatmaps, used = {}, set()
    for (a, b), (mean, count) in audit.heatmaps.items():
        stem = f"heatmap_{file_stem(a, fallback='attribute')}_x_{file_stem(b, fallback='attribute')}"
        name = next(f"{stem}{f'_{k}' if k else ''}" for k in range(len(used) + 1) if f"{stem}{f'_{k}' if k else ''}" not in used)
        used.add(name)
        heatmaps[(a, b)] = save_heatmap(mean, count, path_inside(out, f"{name}.png"), metric=primary,
                                        row_label=a, col_label=b, min_size=audit.summary["config"]["min_group_size"])
        paths[name] = heatmaps[(a, b)]
    paths["report"] = write_text_atomic(out / "report.html", render_report(audit, heatmaps))
    return paths
