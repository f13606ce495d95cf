"""A self-contained HTML report of an audit: tables, embedded heatmaps, the worst subgroups."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.small{color:#a15c00}.bad{background:#fde2e1}.note{color:#555;font-size:.9em}
.kpi{display:inline-block;margin:.3em 1.2em .3em 0;padding:.5em .9em;background:#f6f8fa;border-radius:6px}
.kpi b{display:block;font-size:1.3em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""


def _e(v) -> str:
    """Any value as HTML text: every cohort-derived string (names, classes, groups) passes here."""
    return html.escape(str(v))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, float):
        return "∞" if v == float("inf") else f"{v:.4f}"
    return _e(v)


def _table(df: pd.DataFrame, *, left: tuple[str, ...] = (), highlight=None) -> str:
    head = "".join(f"<th class='{'l' if c in left else ''}'>{_e(c)}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cls = _e(highlight(row)) if highlight else ""
        cells = "".join(f"<td class='{'l' if c in left else ''}'>{_fmt(row[c])}</td>" for c in df.columns)
        body.append(f"<tr class='{cls}'>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_report(audit, heatmaps: dict[tuple[str, str], Path]) -> str:
    """Render the audit as one HTML page with its images embedded (base64).

    Every string that comes from the cohort (its name, class names, attribute names, group
    values) is HTML-escaped. ``heatmaps`` maps an attribute pair to its PNG.
    """
    s = audit.summary
    primary = next(c for c in audit.per_case.columns if c.startswith("dice_"))
    split = f"split {_e(s['split'])}" if s["split"] else "all splits"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Fairness audit – {_e(s['cohort'])}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Fairness audit: {_e(s['cohort'])}</h1>",
             f"<p class='note'>{_e(s['n_cases'])} cases ({split}); classes {_e(', '.join(map(str, audit.classes)))}; "
             f"HD95 in {_e(s['config']['hd_mode'])}; napari-fairseg {_e(s['napari_fairseg_version'])}.</p>"]
    if audit.skipped:
        parts.append(f"<p class='note'>{len(audit.skipped)} unlabelled case(s) skipped.</p>")
    parts.append("<div>" + "".join(f"<span class='kpi'>{_e(k)}<b>{_fmt(v if not isinstance(v, str) else float(v))}</b></span>"
                                   for k, v in s["overall"].items() if k.startswith(("dice", "iou"))) + "</div>")
    if not audit.attributes:
        parts.append("<p class='note'>No attributes were given (the cohort has no attribute columns and no "
                     "metadata table was joined): this report holds the overall metrics only. Give a metadata "
                     "table (<code>--metadata</code>, or <code>metadata.csv</code> in the dataset folder) to "
                     "audit groups.</p>")
        parts.append("<h2>Overall</h2>" + _table(pd.DataFrame(
            [{"metric": k, "mean": (v if not isinstance(v, str) else float(v))} for k, v in s["overall"].items()]),
            left=("metric",)))
        parts.append("</body></html>")
        return "\n".join(parts)
    parts.append("<h2>Equity per attribute</h2><p class='note'>Δ = Σ over known groups |overall − group mean|; "
                 "ES = overall / (1 + Δ) (ES-Dice / ES-IoU / ESSP); ESSP-std uses the std of group means "
                 f"(ddof={_e(s['config']['std_ddof'])}); unknown values count in overall, not as a group.</p>")
    rows = []
    for a, info in s["attributes"].items():
        for mc, e in info["metrics"].items():
            if mc.startswith(("dice", "iou")):
                rows.append({"attribute": a, "metric": mc, "overall": e["overall"], "Δ": e["delta"], "ES": e["es"],
                             "ESSP-std": e["essp_std"], "gap": e["gap"], "worst group": e["worst_group"],
                             "groups": e["n_groups"], "unknown": e["n_unknown"]})
    if rows:
        parts.append(_table(pd.DataFrame(rows), left=("attribute", "metric", "worst group")))
    if "mamamia" in s:
        mm = [{"class": k, "PS": v["performance"], "FS": v["fairness"], "TS": v["total"],
               **{f"F({n})": f for n, f in v["per_variable"].items()}} for k, v in s["mamamia"].items()]
        parts.append("<h2>MAMA-MIA scores</h2>" + _table(pd.DataFrame(mm), left=("class",)))
    parts.append(f"<h2>Groups ({_e(primary)})</h2>")
    g = audit.groups[audit.groups["metric"] == primary].drop(columns=["metric"])
    parts.append(_table(g, left=("attribute", "group"), highlight=lambda r: "small" if r["small"] else ""))
    for (a, b), path in heatmaps.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f"<h2>Heatmap: {_e(a)} × {_e(b)}</h2>"
                     f"<img alt='{_e(f'{a} × {b}')}' src='data:image/png;base64,{data}'>")
    worst = audit.subgroups[audit.subgroups["metric"] == primary].head(15)
    parts.append(f"<h2>Most divergent subgroups ({_e(primary)})</h2><p class='note'>Found with DivExplorer "
                 f"(min support {_e(s['config']['min_support'])}); divergence = subgroup mean − overall; "
                 "t = Welch's t against the whole cohort (|t| ≥ 2 is worth a look).</p>")
    parts.append(_table(worst.drop(columns=["metric"]), left=("subgroup",),
                        highlight=lambda r: "bad" if r["divergence"] < 0 and abs(r["t"]) >= 2 else ""))
    parts.append("</body></html>")
    return "\n".join(parts)
