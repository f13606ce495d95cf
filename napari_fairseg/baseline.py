"""Atlas baseline: a real, model-free predictor used by the demo until a network is trained.

Each voxel's prediction is the majority label of the *training* cases at that voxel (ties go
to the lower value). It needs all cases on one grid, as in the sample cohorts. Cases whose
anatomy departs from the majority (Group 1's deformed caudate, large cups) are segmented
worse: a genuine, measurable bias for the audit to find.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.arrays import load_case, load_image, prediction_path, save_label
from .data.manifest import Cohort
from .errors import InputDataError
from .progress import Job, Progress


def atlas_predictions_job(cohort: Cohort, out_dir: str | Path, *, split: str = "train") -> Job[Path]:
    """Build the majority-label atlas from ``split`` and write it as every case's prediction."""
    train = cohort.cases.loc[(cohort.cases["split"] == split) & cohort.cases["label"].notna(), "case_id"].tolist()
    if not train:
        raise InputDataError(cohort.source, f"no labelled cases in split {split!r} to build an atlas from")
    counts = None
    for i, cid in enumerate(train):
        label = load_case(cohort, cid).label
        if counts is None:
            n_values = 1 + max(max(v) for v in cohort.classes.values())
            counts = np.zeros((n_values, *label.shape), dtype=np.int32)
        elif label.shape != counts.shape[1:]:
            raise InputDataError(cid, f"label shape {label.shape} differs from the first case's "
                                 f"{counts.shape[1:]}: an atlas needs one grid")
        for v in range(counts.shape[0]):
            counts[v] += label == v
        yield Progress("atlas", i + 1, len(train), cid)
    atlas = np.argmax(counts, axis=0).astype(np.int16)
    out = Path(out_dir)
    ids = cohort.case_ids
    for i, cid in enumerate(ids):
        case = load_image(cohort, cid)
        save_label(cohort, prediction_path(cohort, out, cid), atlas, like=case)
        yield Progress("predict", i + 1, len(ids), cid)
    return out

