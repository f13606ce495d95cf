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

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import NPZ_IMAGE_KEYS, NPZ_LABEL_KEYS, encode_label
from ..data.atomic import atomic_path, mark_output, path_inside, write_text_atomic
from ..data.attributes import bin_continuous
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
    generator_groups,
    load_mask_generator,
    mask_generator_job,
    sample_masks,
)

MASK_FILE, IMAGE_FILE = "mask_generator.pt", "image_generator.pt"
#: the folder's record: what it was generated from and the hashes of its generator files
RECORD = "synthesize.json"
RECORD_FORMAT = "napari-fairseg-synthesize"
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(cohort: Cohort, attribute: str, min_cases: int) -> str:
    """A hash of the cases the generators learn from (ids, files, groups): a folder generated
    from another cohort, or from another version of this one, has another fingerprint."""
    ids, groups, _ = generator_groups(cohort, attribute, min_cases)
    rows = cohort.cases.set_index("case_id").loc[ids, ["image", "label"]].astype(str)
    text = json.dumps([[i, g, *r] for i, g, r in zip(ids, groups, rows.itertuples(index=False), strict=True)])
    return hashlib.sha256(text.encode()).hexdigest()


def read_record(folder: Path) -> dict:
    """The record a synthesize run left in ``folder``, or an :class:`InputDataError` saying it has none."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise ValueError("not a synthesize record")
    except (OSError, ValueError):
        raise InputDataError(folder, "not a folder fairseg synthesize wrote (no readable synthesize.json)") from None
    return record


def _generator(path: Path, load, train: Job, record: dict, out: Path) -> Job:
    """Reuse the generator at ``path`` if this folder's record holds its hash, else train it
    (and record the new file's hash)."""
    if path.exists() or path.is_symlink():
        known = record["generators"].get(path.name)
        if path.is_symlink() or not path.is_file() or known != _sha256(path):
            raise InputDataError(path, "this generator file is not the one this folder's run wrote (changed, "
                                 "replaced or linked); delete it to train it again")
        model, meta = load(path)
        train.close()
        yield Progress("reuse", 1, 1, path.name)
        return model, meta
    result = yield from train
    record["generators"][path.name] = _sha256(path)
    write_text_atomic(out / RECORD, json.dumps(record, indent=2) + "\n")
    return result["model"], result["meta"]


def _open_output(out: Path, cohort: Cohort, mine: dict) -> dict:
    """Prepare ``out``: a new or empty folder gets a record; one an earlier run wrote must have
    been written from the same cohort and settings (else one line names what changed)."""
    if "#" in str(out) or ";" in str(out):
        raise InputDataError(out, "the output folder's path holds '#' or ';', which manifests use to name an array "
                             "inside a file and to join channels; choose another folder")
    refuse_overwriting_inputs(out, cohort)
    if out.exists() and not out.is_dir():
        raise InputDataError(out, "the output must be a folder, and this is a file")
    entries = [p for p in out.iterdir() if p.name != ".fairseg-output"] if out.is_dir() else []
    if entries:
        record = read_record(out) if (out / RECORD).is_file() else None
        if record is None:
            raise InputDataError(out, "the output folder holds files fairseg synthesize did not write; choose an "
                                 "empty folder")
        changed = [f"{k} {record.get(k)!r} → {v!r}" for k, v in mine.items() if record.get(k) != v]
        if changed:
            what = "; ".join(c if not c.startswith("cohort_fingerprint") else "the cohort's training cases differ"
                             for c in changed)
            raise InputDataError(out, f"an earlier run wrote this folder with other settings or from another "
                                 f"cohort ({what}); run with its settings to resume, or choose another --out folder")
        if not isinstance(record.get("generators"), dict):
            raise InputDataError(out / RECORD, "corrupt synthesize record (no generator hashes)")
        return record
    mark_output(out)
    record = {"format": RECORD_FORMAT, **mine, "generators": {}}
    write_text_atomic(out / RECORD, json.dumps(record, indent=2) + "\n")
    return record


def _image_dtype(cohort: Cohort, case_id: str) -> np.dtype:
    """The stored dtype of a case's image array (synthetic cases are written in it)."""
    path, _, key = str(cohort.row(case_id)["image"]).partition(KEY_SEP)
    with np.load(path, allow_pickle=False) as data:
        return data[key].dtype


def _pixels(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A painted ``(C, H, W)`` image in the cohort's storage: its dtype (integers rounded and
    clipped to the type's range), channels last when several (as FairSeg npz holds colour)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        img = np.clip(np.rint(img), info.min, info.max)
    out = img.astype(dtype if np.issubdtype(dtype, np.number) else np.float32)
    return out[0] if len(out) == 1 else np.moveaxis(out, 0, -1)


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
        raise ValueError(f"cases per group (--per-group) must be a whole number 1 … 100000, got {per_group!r}")
    masks = MaskGeneratorConfig(**{**asdict(masks or MaskGeneratorConfig()), "seed": seed})
    images = ImageGeneratorConfig(**{**asdict(images or ImageGeneratorConfig()), "seed": seed})
    _check_cohort(cohort, attribute)
    out = Path(out)
    mine = {"cohort": cohort.name, "attribute": attribute, "seed": seed,
            "cohort_fingerprint": fingerprint(cohort, attribute, min(masks.min_cases, images.min_cases)),
            "masks": asdict(masks), "images": asdict(images)}
    record = _open_output(out, cohort, mine)

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
        record, out))
    image_model, image_meta = yield from staged("images", _generator(
        out / IMAGE_FILE, load_image_generator, image_generator_job(cohort, attribute, images, out=out / IMAGE_FILE),
        record, out))
    dtype = _image_dtype(cohort, generator_groups(cohort, attribute, masks.min_cases)[0][0])
    first = cohort.row(cohort.case_ids[0])
    image_key = str(first["image"]).split(KEY_SEP, 1)[-1]
    modality = "oct" if "oct" in image_key else "slo"
    image_key = image_key if image_key in NPZ_IMAGE_KEYS[modality] else NPZ_IMAGE_KEYS[modality][0]
    label_key = NPZ_LABEL_KEYS[modality][0]
    kind = kind_of(cohort)
    groups = mask_meta["groups"]
    planned = [(k, g, i, _case_id(k, g, i)) for k, g in enumerate(groups) for i in range(per_group)]
    row = {cid: {"case_id": cid, "image": f"{path_inside(out, cid + '.npz')}{KEY_SEP}{image_key}",
                 "label": f"{path_inside(out, cid + '.npz')}{KEY_SEP}{label_key}", "split": "train", attribute: g,
                 SYNTHETIC_COLUMN: True} for _, g, _, cid in planned}
    done, total = 0, len(planned)
    for k, group in enumerate(groups):
        for start in range(0, per_group, BATCH):
            ids = [_case_id(k, group, i) for i in range(start, min(start + BATCH, per_group))]
            files = [path_inside(out, f"{cid}.npz") for cid in ids]
            linked = [f.name for f in files if f.is_symlink() or (f.exists() and not f.is_file())]
            if linked:
                raise InputDataError(out, f"{linked[0]} is a link or not a file: a synthetic case is a file this "
                                     "folder's run wrote; delete it to draw it again")
            if not all(f.is_file() for f in files):
                # always a whole batch from the batch's own seed: case i is the same whatever per_group
                batch_seed = int(np.random.SeedSequence([seed, k, start]).generate_state(1)[0])
                drawn = sample_masks(mask_model, mask_meta, group, BATCH, seed=batch_seed)
                painted = paint(image_model, image_meta, drawn, group, seed=batch_seed)
                for f, mask, img in zip(files, drawn, painted, strict=False):
                    if f.is_file():  # written by an earlier run: kept
                        continue
                    with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                        np.savez_compressed(fh, **{image_key: _pixels(img, dtype), label_key: encode_label(mask, kind)})
            for cid in ids:
                done += 1
                yield Progress("synthesize", done, total, cid)
            # every planned case whose file exists, this run's or an earlier one's: a stop keeps them all
            _write(out, [row[cid] for *_, cid in planned if (out / f"{cid}.npz").is_file()], cohort)
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
        The folder was not written by :func:`synthesize_job` from this cohort (its record names
        another cohort, or other training cases), its cases are not all flagged synthetic,
        reference files outside the folder, or belong to groups the cohort does not have.
    """
    if not isinstance(synthetic, Cohort):
        synthetic = open_cohort(synthetic)
    if synthetic.source is None:
        raise InputDataError(None, "synthetic cases come from a folder fairseg synthesize wrote")
    folder = Path(synthetic.source).parent
    flags = synthetic.cases.get(SYNTHETIC_COLUMN)
    if flags is None or not flags.all():
        raise InputDataError(synthetic.source, "not a synthetic cohort: its manifest must flag every case "
                             f"{SYNTHETIC_COLUMN}=true (write one with fairseg synthesize)")
    record = read_record(folder)
    attribute = record.get("attribute")
    if record.get("cohort") != cohort.name or attribute not in cohort.attributes:
        raise InputDataError(folder, f"these cases were generated from cohort {record.get('cohort')!r} "
                             f"(attribute {attribute!r}), not from {cohort.name!r}")
    if record.get("cohort_fingerprint") != fingerprint(cohort, attribute, 1):
        raise InputDataError(folder, f"these cases were generated from another version of {cohort.name!r} (its "
                             "labelled training cases differ): generate them again from this cohort")
    root = folder.resolve()
    for ref in [*synthetic.cases["image"], *synthetic.cases["label"].dropna()]:
        path = Path(str(ref).split(KEY_SEP, 1)[0]).resolve()
        if not path.is_relative_to(root):
            raise InputDataError(synthetic.source, f"a synthetic case refers to {path}, outside its folder: "
                                 "synthetic cases are the files fairseg synthesize wrote there")
    if attribute not in synthetic.cases.columns:
        raise InputDataError(synthetic.source, f"the synthetic manifest has no {attribute!r} column")
    known = set(bin_continuous(cohort.cases[attribute], name=attribute).dropna())  # the generators' group names
    unknown = sorted(set(synthetic.cases[attribute].astype(str)) - known)
    if unknown:
        raise InputDataError(synthetic.source, f"synthetic cases of {attribute} {unknown[:5]}, a group the cohort "
                             f"does not have ({sorted(known)})")
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
