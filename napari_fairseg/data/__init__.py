"""Cohorts: the manifest, dataset readers, case arrays with their geometry, sample cohorts."""

from .arrays import CaseData, load_case, load_image, load_prediction, prediction_path, save_label
from .manifest import Cohort, read_manifest, write_manifest
from .readers import detect_kind, open_cohort

__all__ = [
    "CaseData", "Cohort", "detect_kind", "load_case", "load_image", "load_prediction",
    "open_cohort", "prediction_path", "read_manifest", "save_label", "write_manifest",
]
