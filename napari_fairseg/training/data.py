"""Training data that streams from disk: a persistent cache of preprocessed cases, augmentation, loaders.

Nothing here holds a cohort in memory. Each case is a light item (case id, whether it has a
label, its files' size and mtime); the pipeline's deterministic transforms (load, reorient,
resample, crop, normalise) run once per case and their result is kept on disk by MONAI's
:class:`~monai.data.PersistentDataset` under ``<cache>/<pipeline key>/`` — a changed file gets
a new entry, because its stamp is part of the item. Random augmentation runs on every read:
MONAI's positive/negative-ratio crop to the model's patch, flips, a light affine and an
intensity scale/shift; an equal-scale *synthetic* copy (:mod:`.objectives`) gets an extra
intensity augmentation (contrast, shift, noise), our stand-in for the papers' generated samples.

Randomness is per item: the sampler hands the dataset ``(index, synthetic, seed)`` keys drawn
from the epoch's generator, so a seed gives the same batches whatever the number of loader
workers, a case draws the same augmentation whatever the number of training processes, and a
resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, PersistentDataset, pad_list_data_collate
from monai.transforms import (
    Compose,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    SpatialPadd,
    Transform,
)
from torch.utils.data import DataLoader, Dataset

from ..data.manifest import Cohort
from ..data.pipeline import (
    Pipeline,
    case_items,
    deterministic_transforms,
    legacy_pipeline,
    pipeline_for,
    pipeline_of,
)
from ..data.synthetic import cache_dir
from ..errors import InputDataError
from ..inference.domain import case_summary
from ..models.networks import ModelConfig, pad_to_divisible, size_divisor
from ..models.preprocess import label_to_target

__all__ = ["Key", "Pipeline", "TrainingSet", "epoch_keys", "legacy_pipeline", "loader", "pad_batch", "pipeline_for",
           "pipeline_of", "preprocessed", "preprocessed_root", "random_transforms", "summaries", "synthetic_transforms", "warm"]

#: a plan entry: (index into the dataset's cases, synthetic copy?, the item's random seed)
Key = tuple[int, bool, int]


def preprocessed_root(cache: str | Path | None = None) -> Path:
    """The folder of the persistent caches: ``cache`` or ``<cache_dir()>/preprocessed``."""
    return Path(cache) if cache else cache_dir() / "preprocessed"


def _item_hash(item: dict, context: str) -> bytes:
    """Cache file name of a case item: its id, label flag and file stamps, and the cohort's
    reading of labels (kind, classes), so two cohorts' same-named cases do not collide."""
    text = json.dumps([item, context], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def _context(cohort: Cohort) -> str:
    return json.dumps([cohort.kind, str(cohort.source), sorted((k, list(v)) for k, v in cohort.classes.items())])


def preprocessed(cohort: Cohort, case_ids: Sequence[str], pipeline: Pipeline, *, with_label: bool = True,
                 cache: str | Path | None = None) -> PersistentDataset:
    """``cohort``'s cases through ``pipeline``'s deterministic transforms, cached on disk.

    Items are ``{"case_id", "image": (C, *S) float32, "label": (1, *S) class map}`` (no label
    when ``with_label`` is false). The cache lives in ``preprocessed_root(cache)/<pipeline key>``.
    """
    ids = [str(c) for c in case_ids]  # not numpy strings: a cache entry must load with weights_only
    return PersistentDataset(case_items(cohort, ids, with_label=with_label),
                             transform=deterministic_transforms(cohort, pipeline, with_label=with_label),
                             cache_dir=preprocessed_root(cache) / pipeline.key(),
                             hash_func=partial(_item_hash, context=_context(cohort)))


class _Summarise(Transform):
    """A case's raw geometry and intensity statistics (:func:`~..inference.domain.case_summary`)."""

    def __init__(self, cohort: Cohort):
        self.cohort = cohort

    def __call__(self, item: dict) -> dict:
        from ..data.arrays import load_image

        case = load_image(self.cohort, item["case_id"])
        return {"case_id": item["case_id"], "summary": case_summary(case.image, case.spacing)}


def summaries(cohort: Cohort, case_ids: Sequence[str], *, cache: str | Path | None = None) -> PersistentDataset:
    """Each case's :func:`~..inference.domain.case_summary`, read from disk once and cached."""
    return PersistentDataset(case_items(cohort, [str(c) for c in case_ids], with_label=False),
                             transform=_Summarise(cohort),
                             cache_dir=preprocessed_root(cache) / "summaries",
                             hash_func=partial(_item_hash, context=_context(cohort)))


class _ToTarget(Transform):
    """``label`` (1, *S) class map → ``target``: (1, *S) float foreground (sigmoid head) or
    (1, *S) int64 class indices (softmax head), see :func:`~..models.preprocess.label_to_target`."""

    def __init__(self, config: ModelConfig):
        self.config = config

    def __call__(self, item: dict) -> dict:
        item = dict(item)
        label = np.rint(np.asarray(item.pop("label"))[0]).astype(np.int64)
        target = label_to_target(label, self.config, source=item["case_id"])
        item["target"] = torch.from_numpy(target if target.ndim > label.ndim else target[None])
        return item


def _flip_axes(spatial_dims: int) -> tuple[int, ...]:
    # every axis but the first: after RAS orientation it runs left–right, and mirroring it would
    # swap lateral structures (the bundled brain model segments the *left* caudate)
    return tuple(range(1, spatial_dims))


def random_transforms(config: ModelConfig, *, with_label: bool = True, augment: bool = True,
                      fg_prob: float = 0.5) -> Compose:
    """The random part of a training item: crop to ``config.patch_size`` (positive/negative
    ratio ``fg_prob`` when labelled; the whole image when the patch is ``None``), then, with
    ``augment``, flips, a light affine and an intensity scale and shift."""
    keys = ["image", "label"] if with_label else ["image"]
    steps: list = []
    if config.patch_size is not None:
        if with_label:
            steps.append(RandCropByPosNegLabeld(keys, label_key="label", spatial_size=config.patch_size,
                                                pos=fg_prob, neg=1 - fg_prob, allow_smaller=True))
        else:
            steps.append(RandSpatialCropd(keys, roi_size=config.patch_size, random_size=False))
    if augment:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in _flip_axes(config.spatial_dims)]
        steps += [RandAffined(keys, prob=0.3, rotate_range=[0.1] * (1 if config.spatial_dims == 2 else 3),
                              scale_range=[0.1] * config.spatial_dims, mode=["bilinear", "nearest"][:len(keys)],
                              padding_mode="zeros"),
                  RandScaleIntensityd("image", factors=0.1, prob=0.5),
                  RandShiftIntensityd("image", offsets=0.1, prob=0.5)]
    return Compose(steps)


def synthetic_transforms() -> Compose:
    """Intensity augmentation of an equal-scale extra copy: contrast ×U(0.85, 1.15), a shift of
    ±0.1 and Gaussian noise σ 0.05 (the image is normalised)."""
    return Compose([RandScaleIntensityd("image", factors=0.15, prob=1.0),
                    RandShiftIntensityd("image", offsets=0.1, prob=1.0),
                    RandGaussianNoised("image", prob=1.0, std=0.05)])


class TrainingSet(Dataset):
    """Training items read through a :func:`preprocessed` dataset and augmented per read.

    Indexed by :data:`Key` ``(index, synthetic, seed)``. Items hold ``case_id``, ``image``
    ``(C, *P)`` and, labelled, ``target`` ``(1, *P)``, zero-padded to at least the patch; a
    batch is padded to the network's size divisor by :func:`pad_batch`.
    """

    def __init__(self, cases: PersistentDataset, config: ModelConfig, *, with_label: bool = True,
                 augment: bool = True, fg_prob: float = 0.5):
        self.cases, self.with_label = cases, with_label
        self.random = random_transforms(config, with_label=with_label, augment=augment, fg_prob=fg_prob)
        self.synthetic = synthetic_transforms()
        keys = ["image", "target"] if with_label else ["image"]
        finish = [_ToTarget(config)] if with_label else []
        if config.patch_size is not None:
            finish.append(SpatialPadd(keys, spatial_size=config.patch_size))
        self.finish = Compose(finish)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: Key) -> dict:
        index, synthetic, seed = key
        item = _seeded(self.random, seed)(self.cases[index])
        if isinstance(item, list):  # a crop returns a list of num_samples (1) items
            item = item[0]
        if synthetic:
            item = _seeded(self.synthetic, seed + 1)(item)
        # plain tensors: a batch mixes augmented items (MetaTensors) with untouched ones
        return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in self.finish(item).items()}


def _seeded(transforms: Compose, seed: int) -> Compose:
    """``transforms`` drawing from one generator seeded with ``seed`` (cheaper than a seed each)."""
    state = np.random.RandomState(seed % 2**32)
    for t in transforms.transforms:
        t.set_random_state(state=state)
    return transforms


def pad_batch(x: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Zero-pad a batch ``(B, C, *S)`` to the network's size divisor (and at least its patch)."""
    return pad_to_divisible(x, size_divisor(config), minimum=config.patch_size)[0]


def epoch_keys(plan: Sequence[tuple[int, bool]], rng: np.random.Generator) -> list[Key]:
    """The sampler order of an epoch: each plan entry with its own seed from ``rng``."""
    seeds = rng.integers(0, 2**31 - 1, size=len(plan))
    return [(int(i), bool(s), int(z)) for (i, s), z in zip(plan, seeds, strict=True)]


def _seed_worker(worker_id: int, seed: int) -> None:
    """Seed a loader worker's global generators (the transforms are seeded per item)."""
    s = (seed * 1_000_003 + worker_id) % 2**32
    np.random.seed(s)  # noqa: NPY002 - for code that draws from numpy's global generator
    random.seed(s)
    torch.manual_seed(s)


def _identity(x):
    return x


def loader(dataset: Dataset, *, keys: Sequence | None = None, batches: Sequence[Sequence] | None = None,
           workers: int = 0, seed: int = 0) -> DataLoader:
    """A loader over ``dataset`` in a given order, with ``workers`` worker processes.

    Give either ``keys`` (items come one by one, unbatched) or ``batches`` (lists of keys, each
    collated by MONAI into one batch, items zero-padded to the largest of the batch).
    """
    common = {"num_workers": workers, "generator": torch.Generator().manual_seed(seed),
              "worker_init_fn": partial(_seed_worker, seed=seed) if workers else None}
    if batches is not None:
        return DataLoader(dataset, batch_sampler=[list(b) for b in batches], collate_fn=pad_list_data_collate,
                          **common)
    return DataLoader(dataset, batch_size=None, sampler=list(keys), collate_fn=_identity, **common)


class _Warm(Dataset):
    """Fills the persistent cache: index ``i`` preprocesses case ``i`` (unless cached) and returns
    ``(case_id, summary or None, error or None)`` — an error as ``(source, problem)``, raised
    again by the caller (an exception does not cross a worker process intact)."""

    def __init__(self, cases: PersistentDataset, summaries: PersistentDataset | None):
        self.cases, self.summaries = cases, summaries

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int):
        cid = self.cases.data[i]["case_id"]
        try:
            if not _is_cached(self.cases, i):
                self.cases[i]
            return cid, (self.summaries[i]["summary"] if self.summaries is not None else None), None
        except InputDataError as exc:
            return cid, None, (exc.source, exc.problem)


def _is_cached(dataset: PersistentDataset, i: int) -> bool:
    name = dataset.hash_func(dataset.data[i]).decode() + dataset.transform_hash
    return (dataset.cache_dir / f"{name}.pt").is_file()


def warm(cases: PersistentDataset, summaries: PersistentDataset | None = None, *, workers: int = 0
         ) -> Iterator[tuple[str, dict | None]]:
    """Preprocess every case of ``cases`` into its cache (already cached cases are not read);
    yields ``(case_id, summary)`` per case as it is done (``summary`` from ``summaries``, else
    ``None``).

    Raises
    ------
    InputDataError
        A case that cannot be read or preprocessed, naming its file.
    """
    for cid, summary, error in loader(_Warm(cases, summaries), keys=range(len(cases)), workers=workers):
        if error is not None:
            raise InputDataError(*error)
        yield cid, summary
