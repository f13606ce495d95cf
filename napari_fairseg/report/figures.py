"""Figures of the audit, drawn with matplotlib's Agg backend (no screen needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plain(text) -> str:
    """Cohort text for a figure: ``$`` escaped, so a group value is never read as mathtext."""
    return str(text).replace("$", r"\$")


#: metrics whose values lie in [0, 1] with 1 best: their heatmaps use one fixed 0–1 colour scale,
#: so a colour means the same Dice in every heatmap (0.25 is red, 0.71 yellow-green, always)
UNIT_METRICS = ("dice", "iou")


def draw_heatmap(ax, mean: pd.DataFrame, count: pd.DataFrame, *, metric: str = "dice",
                 row_label: str = "", col_label: str = "", min_size: int = 10):
    """Draw an intersectional heatmap on a matplotlib ``Axes``.

    Each cell shows the mean (2 decimals) and ``n``; empty cells are grey with "no cases";
    cells with fewer than ``min_size`` cases are marked with ``*`` and hatched. Dice and IoU use
    the fixed scale 0 (red) … 1 (green); other metrics (distances in mm, lower is better) span
    their values with green at the low end.
    Returns the image artist (for a colour bar).
    """
    import matplotlib as mpl

    data = np.ma.masked_invalid(mean.to_numpy(dtype=float))
    unit = metric.split("_")[0] in UNIT_METRICS
    cmap = mpl.colormaps["RdYlGn" if unit else "RdYlGn_r"].with_extremes(bad="#d9d9d9")
    finite = data.compressed()
    if unit:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.05, hi + 0.05
    im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(mean.shape[1]), [_plain(c) for c in mean.columns], rotation=30, ha="right")
    ax.set_yticks(range(mean.shape[0]), [_plain(r) for r in mean.index])
    ax.set_xlabel(_plain(col_label))
    ax.set_ylabel(_plain(row_label))
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            n = int(count.iat[i, j])
            if n == 0:
                ax.text(j, i, "no cases", ha="center", va="center", fontsize=8, color="#555555")
                continue
            small = n < min_size
            txt = f"{mean.iat[i, j]:.2f}{'*' if small else ''}\nn={n}"
            r, g, b, _ = cmap(im.norm(mean.iat[i, j]))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.45  # white text on dark cells
            ax.text(j, i, txt, ha="center", va="center", fontsize=9, color="white" if dark else "black")
            if small:
                ax.add_patch(mpl.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                                   edgecolor="#666666", linewidth=0))
    ax.set_title(f"mean {metric} by {_plain(row_label)} × {_plain(col_label)}"
                 + (f"  (* n < {min_size})" if min_size else ""))
    return im


def save_heatmap(mean: pd.DataFrame, count: pd.DataFrame, path: str | Path, *, metric: str = "dice",
                 row_label: str = "", col_label: str = "", min_size: int = 10) -> Path:
    """Save an intersectional heatmap as PNG and return its path."""
    from matplotlib.figure import Figure

    from ..data.atomic import atomic_path

    w = max(4.5, 1.3 * mean.shape[1] + 2.5)
    h = max(3.0, 0.75 * mean.shape[0] + 1.8)
    fig = Figure(figsize=(w, h), dpi=100)
    ax = fig.add_subplot()
    im = draw_heatmap(ax, mean, count, metric=metric, row_label=row_label, col_label=col_label, min_size=min_size)
    fig.colorbar(im, ax=ax, label=f"mean {metric}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def draw_curves(ax, table: pd.DataFrame, y: str, *, x: str = "n_labelled", by: str = "strategy",
                label: str | None = None):
    """Mean of ``y`` against ``x`` per value of ``by``, with a ±1 std band over the other rows
    (the seeds of a simulation). Points with one row have no band."""
    for name, part in table.groupby(by, sort=False):
        stats = part.groupby(x)[y].agg(["mean", "std"]).sort_index()
        line, = ax.plot(stats.index, stats["mean"], marker="o", markersize=3, label=str(name))
        band = stats["std"].fillna(0.0)
        ax.fill_between(stats.index, stats["mean"] - band, stats["mean"] + band, color=line.get_color(),
                        alpha=0.18, linewidth=0)
    ax.set_xlabel("labelled cases" if x == "n_labelled" else x)
    ax.set_ylabel(label or y)
    ax.grid(alpha=0.3)


def save_learning_curves(table: pd.DataFrame, path: str | Path, *, ratio: str | None = None,
                         title: str = "") -> Path:
    """Seed 001's figures in one PNG: ESSP, Δ, Dice and (``ratio``, e.g. ``ratio[Group 1]``)
    the share of a group in the labelled set, against the budget; mean ± std over seeds."""
    from matplotlib.figure import Figure

    from ..data.atomic import atomic_path

    panels = [("essp", "ESSP"), ("delta", "Δ (Dice)"), ("dice", "Dice")]
    if ratio is not None:
        panels.append((ratio, ratio.replace("ratio[", "share of ").rstrip("]") + " in labelled set"))
    fig = Figure(figsize=(10, 7.5), dpi=100)
    axes = fig.subplots(2, 2).ravel()
    for ax, (col, lab) in zip(axes, panels, strict=False):
        draw_curves(ax, table, col, label=lab)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
