"""Throw-away stand-in for :mod:`napari_fairseg.data.pipeline` (issue 12, part P).

Replaced by data.pipeline at merge: delete this file and import the same names from
``..data.pipeline`` in :mod:`.data`. It implements only what a checkpoint without a recorded
pipeline meant (load, then whole-image intensity normalisation as ``ModelConfig.intensity``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.transforms import Compose, Transform

from ..data.arrays import load_case, load_image
from ..data.manifest import KEY_SEP, Cohort, split_channels
from ..models.preprocess import normalise_intensity


@dataclass(frozen=True)
class Pipeline:
    spatial_dims: int
    normalise: str = "zscore"

    def to_json(self) -> str:
        return json.dumps({"spatial_dims": self.spatial_dims, "orientation": None, "spacing": None, "crop": "none",
                           "clip": None, "normalise": self.normalise, "size": None})

    def key(self) -> str:
        return "legacy-" + hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


def legacy_pipeline(model_config) -> Pipeline:
    return Pipeline(model_config.spatial_dims, model_config.intensity)


def pipeline_for(cohort, case_ids=None, *, model_config=None, **overrides) -> Pipeline:
    return legacy_pipeline(model_config)


def pipeline_of(ckpt) -> Pipeline:
    return legacy_pipeline(ckpt.config)


def case_items(cohort: Cohort, case_ids, *, with_label: bool = True) -> list[dict]:
    def stamp(cid):
        row = cohort.row(cid)
        refs = split_channels(row["image"]) + ([row["label"]] if with_label else [])
        return [(s.st_size, s.st_mtime_ns) for s in (Path(r.split(KEY_SEP, 1)[0]).stat() for r in refs)]
    return [{"case_id": cid, "with_label": with_label, "stamp": stamp(cid)} for cid in case_ids]


class _LoadNormalise(Transform):
    def __init__(self, cohort, pipeline, with_label):
        self.cohort, self.pipeline, self.with_label = cohort, pipeline, with_label

    def __call__(self, item):
        cid = item["case_id"]
        case = load_case(self.cohort, cid) if self.with_label else load_image(self.cohort, cid)
        out = {"case_id": cid,
               "image": torch.from_numpy(normalise_intensity(case.image, self.pipeline.normalise, source=cid))}
        if self.with_label:
            out["label"] = torch.from_numpy(case.label[None])
        return out


def deterministic_transforms(cohort, pipeline, *, with_label: bool = True) -> Compose:
    return Compose([_LoadNormalise(cohort, pipeline, with_label)])
