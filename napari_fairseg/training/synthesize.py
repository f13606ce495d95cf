"""Seed 003 as a workflow: generate mask–image pairs per group and train with them.

:func:`synthesize_job` trains the two generators on a FairSeg-style fundus cohort (or reuses
those an earlier run left in the output folder) and writes ``per_group`` cases for every group
of one attribute, in the cohort's own format (npz, FairSeg mask codes 0 / −1 rim / −2 cup),
with a ``manifest.csv`` whose ``synthetic`` column is true. Running it again with the same
settings resumes: finished generators and cases are kept, the rest is made (a larger
``per_group`` adds cases). Cases are drawn in batches of :data:`BATCH` from seeds derived from
``(seed, group, batch)``, so a case is the same whether it was written by a resumed run, an
uninterrupted one or one asking for more cases.

:func:`with_synthetic` adds such a folder's cases to the real cohort they were generated from,
as training cases flagged synthetic: validation, the audit and equal-scale training
(:class:`~.objectives.EqualScaleObjective`) tell them apart from real cases.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import NPZ_IMAGE_KEYS, NPZ_LABEL_KEYS, encode_label
from ..data.atomic import atomic_path, is_output, mark_output, path_inside
from ..data.kinds import kind_of
from ..data.manifest import (
    KEY_SEP,
    SYNTHETIC_COLUMN,
    Cohort,
    merge_cohorts,
    refuse_overwriting_inputs,
    write_manifest,
)
from ..data.readers import MANIFEST_NAME, open_cohort
from ..errors import InputDataError
from ..progress import Job, Progress
from .image_generator import ImageGeneratorConfig, image_generator_job, load_image_generator, paint
from .mask_generator import (
    MaskGeneratorConfig,
    load_mask_generator,
    mask_generator_job,
    sample_masks,
)

MASK_FILE, IMAGE_FILE = "mask_generator.pt", "image_generator.pt"
#: cases painted per batch (one DDIM run)
BATCH = 8
#: most levels a numeric attribute may have to count as categorical (as :func:`~napari_fairseg.data.attributes.bin_continuous`)
CATEGORICAL_LEVELS = 8


def _check_cohort(cohort: Cohort, attribute: str) -> None:
    if kind_of(cohort).storage.name != "npz":
        raise InputDataError(cohort.source, f"synthesize writes FairSeg npz cases (optic disc and cup); cohort "
                             f"{cohort.name!r} is of kind {cohort.kind!r}")
    if attribute in cohort.attributes:
        values = cohort.cases[attribute]
        numeric = pd.to_numeric(values, errors="coerce")
        if values.notna().any() and numeric.notna().sum() == values.notna().sum() and \
                (attribute.lower() == "age" or numeric.nunique() > CATEGORICAL_LEVELS):
            raise InputDataError(cohort.source, f"attribute {attribute!r} is continuous (binned for the audit): "
                                 "synthesize per group of a categorical attribute (race, gender, ethnicity, …)")


def _case_id(k: int, group: str, i: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", group).strip("-")[:40] or "group"
    return f"syn-g{k}-{slug}-{i:05d}"


def _generator(path: Path, load, train: Job, *, attribute: str, cohort: Cohort, config) -> Job:
    """Reuse the generator at ``path`` if an earlier run with these settings wrote it, else train it."""
    if path.exists():
        model, meta = load(path)
        mine = {"attribute": attribute, "cohort": cohort.name, **asdict(config)}
        stored = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        theirs = {"attribute": meta.get("attribute"), "cohort": meta.get("cohort"), **stored}
        changed = [f"{k} {theirs.get(k)!r} → {v!r}" for k, v in mine.items() if theirs.get(k) != v]
        if changed:
            raise InputDataError(path, f"an earlier run trained this generator with other settings ({', '.join(changed)}); "
                                 "run with its settings to resume, or choose another --out folder")
        train.close()
        yield Progress("reuse", 1, 1, path.name)
        return model, meta
    result = yield from train
    return result["model"], result["meta"]


def synthesize_job(cohort: Cohort, attribute: str, per_group: int, out: str | Path, *,
                   masks: MaskGeneratorConfig | None = None, images: ImageGeneratorConfig | None = None,
                   seed: int = 0) -> Job[Cohort]:
    """Generate ``per_group`` cases for every group of ``attribute`` into the folder ``out``.

    Parameters
    ----------
    cohort : Cohort
        A 2D FairSeg-style cohort with labelled masks (disc and cup) and ``attribute``.
    attribute : str
        A categorical attribute with at least two groups.
    per_group : int
        Cases to write per group.
    out : str or Path
        An empty folder, or one an earlier run with the same settings wrote (resumed). It gets
        ``mask_generator.pt``, ``image_generator.pt``, one ``<case>.npz`` per case and
        ``manifest.csv`` (+ sidecar), rewritten after every batch.
    masks, images : config, optional
        The generators' training settings (their ``seed`` is ``seed``).
    seed : int
        Seeds the generators' training and every drawn case.

    Yields
    ------
    Progress
        ``load`` / ``train`` / ``reuse`` of each generator (stage prefixed ``masks:`` /
        ``images:``), then ``synthesize`` per case.

    Returns
    -------
    Cohort
        The synthetic cohort (every case ``synthetic``, split ``train``).
    """
    if isinstance(per_group, bool) or not isinstance(per_group, int) or not 1 <= per_group <= 100_000:
        raise ValueError(f"per_group must be a whole number 1 … 100000, got {per_group!r}")
    masks = MaskGeneratorConfig(**{**asdict(masks or MaskGeneratorConfig()), "seed": seed})
    images = ImageGeneratorConfig(**{**asdict(images or ImageGeneratorConfig()), "seed": seed})
    _check_cohort(cohort, attribute)
    out = Path(out)
    refuse_overwriting_inputs(out, cohort)
    if out.exists() and any(out.iterdir()) and not is_output(out):
        raise InputDataError(out, "the output folder holds files napari-fairseg did not write; choose an empty folder")
    mark_output(out)

    def staged(prefix, job):
        result = None
        try:
            while True:
                p = next(job)
                yield Progress(f"{prefix}: {p.stage}", p.done, p.total, p.message)
        except StopIteration as stop:
            result = stop.value
        return result

    mask_model, mask_meta = yield from staged("masks", _generator(
        out / MASK_FILE, load_mask_generator, mask_generator_job(cohort, attribute, masks, out=out / MASK_FILE),
        attribute=attribute, cohort=cohort, config=masks))
    image_model, image_meta = yield from staged("images", _generator(
        out / IMAGE_FILE, load_image_generator, image_generator_job(cohort, attribute, images, out=out / IMAGE_FILE),
        attribute=attribute, cohort=cohort, config=images))
    first = cohort.row(cohort.case_ids[0])
    image_key = str(first["image"]).split(KEY_SEP, 1)[-1]
    modality = "oct" if "oct" in image_key else "slo"
    image_key = image_key if image_key in NPZ_IMAGE_KEYS[modality] else NPZ_IMAGE_KEYS[modality][0]
    label_key = NPZ_LABEL_KEYS[modality][0]
    kind = kind_of(cohort)
    groups = mask_meta["groups"]
    rows, done, total = [], 0, per_group * len(groups)
    for k, group in enumerate(groups):
        for start in range(0, per_group, BATCH):
            ids = [_case_id(k, group, i) for i in range(start, min(start + BATCH, per_group))]
            files = [path_inside(out, f"{cid}.npz") for cid in ids]
            if not all(f.is_file() for f in files):
                # always a whole batch from the batch's own seed: case i is the same whatever per_group
                batch_seed = int(np.random.SeedSequence([seed, k, start]).generate_state(1)[0])
                drawn = sample_masks(mask_model, mask_meta, group, BATCH, seed=batch_seed)
                painted = paint(image_model, image_meta, drawn, group, seed=batch_seed)
                for f, mask, img in zip(files, drawn, painted, strict=False):
                    if f.is_file():  # written by an earlier run: kept
                        continue
                    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
                    with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                        np.savez_compressed(fh, **{image_key: pixels[0] if len(pixels) == 1 else np.moveaxis(pixels, 0, -1),
                                                   label_key: encode_label(mask, kind)})
            for cid, f in zip(ids, files, strict=True):
                rows.append({"case_id": cid, "image": f"{f}{KEY_SEP}{image_key}", "label": f"{f}{KEY_SEP}{label_key}",
                             "split": "train", attribute: group, SYNTHETIC_COLUMN: True})
                done += 1
                yield Progress("synthesize", done, total, cid)
            _write(out, rows, cohort)
    return open_cohort(out / MANIFEST_NAME)


def _write(out: Path, rows: list[dict], cohort: Cohort) -> None:
    synthetic = Cohort(pd.DataFrame(rows), cohort.kind, dict(cohort.classes), f"{cohort.name}-synthetic",
                       [f"generated from {cohort.name!r} by fairseg synthesize (seed 003)"], out / MANIFEST_NAME)
    write_manifest(synthetic, out / MANIFEST_NAME)


def with_synthetic(cohort: Cohort, synthetic: Cohort | str | Path) -> Cohort:
    """``cohort`` plus the cases of a :func:`synthesize_job` folder, as training cases flagged synthetic.

    Raises
    ------
    InputDataError
        The folder's cases are not all flagged synthetic, or are of another kind or classes,
        or lack every attribute the real cohort's groups could be read from.
    """
    if not isinstance(synthetic, Cohort):
        synthetic = open_cohort(synthetic)
    flags = synthetic.cases.get(SYNTHETIC_COLUMN)
    if flags is None or not flags.all():
        raise InputDataError(synthetic.source, "not a synthetic cohort: its manifest must flag every case "
                             f"{SYNTHETIC_COLUMN}=true (write one with fairseg synthesize)")
    shared = [a for a in synthetic.attributes if a in cohort.attributes]
    if not shared:
        raise InputDataError(synthetic.source, f"the synthetic cases have none of the cohort's attributes "
                             f"{cohort.attributes}: they were generated from another cohort")
    real = cohort.cases.copy()
    real[SYNTHETIC_COLUMN] = False
    real_cohort = Cohort(real, cohort.kind, dict(cohort.classes), cohort.name, list(cohort.notes), cohort.source)
    cases = synthetic.cases.copy()
    cases["split"] = "train"
    synthetic = Cohort(cases, synthetic.kind, dict(synthetic.classes), synthetic.name, list(synthetic.notes),
                       synthetic.source)
    merged = merge_cohorts([real_cohort, synthetic], name=cohort.name)
    where = Path(synthetic.source).parent if synthetic.source is not None else synthetic.name
    return Cohort(merged.cases, merged.kind, dict(merged.classes), cohort.name,
                  [*cohort.notes, f"{len(synthetic)} synthetic cases from {where}"], cohort.source)
