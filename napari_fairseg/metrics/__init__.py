"""Per-case segmentation metrics, group fairness summaries and subgroup discovery."""

from .distance import hausdorff95, norm_hd
from .groups import bootstrap_ci, equity_summary, group_table, mamamia_scores, variance_fairness
from .overlap import (
    class_counts,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    overlap_metrics,
)
from .subgroups import discover_subgroups, intersection_table

__all__ = [
    "bootstrap_ci", "class_counts", "confusion_counts", "dice_from_counts", "discover_subgroups",
    "equity_summary", "group_table", "hausdorff95", "intersection_table", "iou_from_counts",
    "mamamia_scores", "norm_hd", "overlap_metrics", "variance_fairness",
]
