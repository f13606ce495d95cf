"""The cohort manifest: one row per case, plus what the cohort as a whole is.

A manifest is a CSV with the columns ``case_id``, ``image``, ``label`` (optional),
``split`` (optional) and one column per attribute, and a small JSON sidecar
(``<name>.cohort.json``) with the cohort's kind, class definitions and reader notes.

``image`` holds one path, several paths joined by ``;`` (channels, e.g. MAMA-MIA phases), or
``file.npz#key`` for an array inside an ``.npz``. Paths are written relative to the manifest.
Missing attribute values mean *unknown*.

A :class:`Cohort` is the one boundary every case table crosses (manifests, dataset folders,
metadata joins), so it is where case ids are checked to be plain file names (they name every
output file: predictions, maps, annotations) and attribute names to be printable.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import InputDataError
from .atomic import restore_formulas, write_csv_atomic, write_text_atomic
from .kinds import KIND, NIFTI, kind_of

RESERVED_COLUMNS = ("case_id", "image", "label", "split")
#: Identifier columns kept in the manifest but never audited as attributes.
ID_COLUMNS = ("pid", "patient_id")
#: The provenance column: ``True`` for a generated case (``fairseg synthesize``), else real.
#: Kept in the manifest, read as a boolean, never audited as an attribute.
SYNTHETIC_COLUMN = "synthetic"
#: Columns that are neither files nor attributes.
NOT_ATTRIBUTES = (*RESERVED_COLUMNS, *ID_COLUMNS, SYNTHETIC_COLUMN)
_TRUE, _FALSE = {"true", "1", "yes", "1.0"}, {"false", "0", "no", "0.0", ""}
#: The built-in cohort kinds (:data:`.kinds.KIND` describes each).
KINDS = tuple(KIND)
SPLITS = ("train", "val", "test", "pool")
CHANNEL_SEP = ";"
KEY_SEP = "#"
#: Longest case id / attribute name: ids name files, and most file systems stop at 255 bytes.
MAX_NAME_LENGTH = 128
#: A case id: letters, digits, ``-``, ``_`` and ``.``, not starting with ``.`` or ``-``.
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


def default_classes(kind: str) -> dict[str, tuple[int, ...]]:
    """Class definitions used when a cohort does not state its own (the kind's ``default_classes``)."""
    return dict(kind_of(kind).default_classes)


@dataclass
class Cohort:
    """A set of cases with their files, split and attributes.

    Attributes
    ----------
    cases : pandas.DataFrame
        One row per case: ``case_id``, ``image``, ``label``, ``split`` and attribute columns.
        Paths are absolute.
    kind : str
        A key of :data:`.kinds.KIND`, whose description decides how files are read and how
        predictions are named.
    classes : dict of str to tuple of int
        Evaluated classes, each a set of label values (fundus: cup, rim, disc = rim ∪ cup).
    name : str
        Display name.
    notes : list of str
        What the reader detected or could not match (schemas, units, unmatched metadata).
    """

    cases: pd.DataFrame
    kind: str
    classes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    name: str = "cohort"
    notes: list[str] = field(default_factory=list)
    source: Path | None = None

    def __post_init__(self):
        kind_of(self.kind)  # raises ValueError for an unknown kind
        self.classes = {str(k): tuple(int(v) for v in vals)
                        for k, vals in (self.classes or default_classes(self.kind)).items()}
        self.cases = validate_cases(self.cases, source=self.source)
        self._rows = {cid: i for i, cid in enumerate(self.cases["case_id"])}

    @property
    def attributes(self) -> list[str]:
        """Attribute columns: every column that is neither reserved, an identifier nor provenance."""
        return [c for c in self.cases.columns if c not in NOT_ATTRIBUTES]

    @property
    def synthetic_ids(self) -> list[str]:
        """Ids of the generated cases (``synthetic`` column true); ``[]`` for a real cohort."""
        if SYNTHETIC_COLUMN not in self.cases.columns:
            return []
        return self.cases.loc[self.cases[SYNTHETIC_COLUMN], "case_id"].tolist()

    @property
    def case_ids(self) -> list[str]:
        return self.cases["case_id"].tolist()

    def __len__(self) -> int:
        return len(self.cases)

    def row(self, case_id: str) -> pd.Series:
        """The manifest row of one case (exact id)."""
        if case_id not in self._rows:
            raise KeyError(f"no case {case_id!r} in cohort {self.name!r}")
        return self.cases.iloc[self._rows[case_id]]

    def missing_files(self) -> list[tuple[str, str]]:
        """``(case_id, path)`` for every referenced file that does not exist."""
        missing = []
        for cid, img, lab in self.cases[["case_id", "image", "label"]].itertuples(index=False):
            for ref in [*split_channels(img), *([lab] if isinstance(lab, str) and lab else [])]:
                path = ref.split(KEY_SEP, 1)[0]
                if not Path(path).is_file():
                    missing.append((cid, path))
        return missing

    def input_files(self) -> list[Path]:
        """Every file the cohort reads: its manifest and sidecar, images and labels."""
        files = []
        if self.source is not None and Path(self.source).is_file():
            files += [Path(self.source), sidecar_path(self.source)]
        for img, lab in self.cases[["image", "label"]].itertuples(index=False):
            for ref in [*split_channels(img), *([lab] if isinstance(lab, str) and lab else [])]:
                files.append(Path(ref.split(KEY_SEP, 1)[0]))
        return files

    def check_files(self) -> None:
        """Raise an :class:`InputDataError` listing missing files, if any."""
        missing = self.missing_files()
        if missing:
            shown = "; ".join(f"{cid}: {p}" for cid, p in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise InputDataError(self.source, f"{len(missing)} referenced file(s) do not exist: {shown}{more}")


def split_channels(image_ref: str) -> list[str]:
    """The channel references of an ``image`` cell."""
    return [p for p in str(image_ref).split(CHANNEL_SEP) if p]


def _row_name(i: int, source) -> str:
    """How an error names row ``i`` of a case table: its CSV line, or its row number."""
    if source is not None and str(source).lower().endswith(".csv"):
        return f"line {i + 2} of {Path(source).name}"
    return f"row {i + 1}"


def check_case_ids(ids: pd.Series, *, source=None) -> None:
    """Raise unless every case id is a plain file name of at most :data:`MAX_NAME_LENGTH` characters.

    Case ids name output files (``<out>/<case_id>.nii.gz``): ``../x``, ``/abs/x`` or ``a/../x``
    would write outside the output folder.
    """
    for i, cid in enumerate(ids):
        if len(cid) > MAX_NAME_LENGTH:
            raise InputDataError(source, f"case id {cid[:40]!r}... in {_row_name(i, source)} is {len(cid)} "
                                 f"characters long; at most {MAX_NAME_LENGTH} are allowed (ids name files)")
        if not CASE_ID_PATTERN.match(cid):
            raise InputDataError(source, f"case id {cid!r} in {_row_name(i, source)} is not a plain file name: "
                                 "use letters, digits, '-', '_', '.' (not first)")


def check_attribute_names(names, *, source=None) -> None:
    """Raise unless every attribute name is printable text of at most :data:`MAX_NAME_LENGTH` characters.

    Any other character is allowed: file names built from attributes go through
    :func:`~.atomic.file_stem`, and reports escape them.
    """
    for name in names:
        text = str(name)
        if not text.strip() or len(text) > MAX_NAME_LENGTH or not text.isprintable():
            raise InputDataError(source, f"attribute (column) name {text[:40]!r} is empty, longer than "
                                 f"{MAX_NAME_LENGTH} characters or holds control characters; rename the column")


def validate_cases(cases: pd.DataFrame, *, source=None) -> pd.DataFrame:
    """Check a case table and return a normalised copy.

    Raises
    ------
    InputDataError
        Missing ``case_id``/``image`` columns, empty or duplicate case ids (also ids equal up to
        case, which a case-insensitive join could not tell apart), a case id that is not a plain
        file name (see :func:`check_case_ids`), a bad attribute name, or an unknown split.
    """
    for col in ("case_id", "image"):
        if col not in cases.columns:
            raise InputDataError(source, f"the manifest has no {col!r} column (columns: {list(cases.columns)})")
    df = cases.copy().reset_index(drop=True)
    for col in ("label", "split"):
        if col not in df.columns:
            df[col] = pd.NA
    df["case_id"] = df["case_id"].astype("string").str.strip()
    if df["case_id"].isna().any() or (df["case_id"] == "").any():
        rows = df.index[df["case_id"].isna() | (df["case_id"] == "")].tolist()
        raise InputDataError(source, f"empty case_id in row(s) {[r + 2 for r in rows][:10]} (CSV line numbers)")
    check_case_ids(df["case_id"], source=source)
    check_attribute_names([c for c in df.columns if c not in RESERVED_COLUMNS], source=source)
    folded = df["case_id"].str.lower()
    dup = folded[folded.duplicated(keep=False)]
    if len(dup):
        ids = sorted(df.loc[dup.index, "case_id"].unique())[:10]
        raise InputDataError(source, f"duplicate case ids (compared ignoring case): {ids}")
    if df["image"].isna().any():
        ids = df.loc[df["image"].isna(), "case_id"].tolist()[:10]
        raise InputDataError(source, f"case(s) with no image: {ids}")
    split = df["split"].astype("string").str.strip().str.lower()
    split = split.replace({"validation": "val", "training": "train", "testing": "test", "": pd.NA})
    bad = split.dropna()[~split.dropna().isin(SPLITS)]
    if len(bad):
        raise InputDataError(source, f"unknown split value(s) {sorted(bad.unique())[:5]} "
                             f"(expected one of {SPLITS}) for case(s) {df.loc[bad.index, 'case_id'].tolist()[:5]}")
    df["split"] = split
    if SYNTHETIC_COLUMN in df.columns:
        df[SYNTHETIC_COLUMN] = _flags(df, source)
    df["label"] = df["label"].astype("string").replace({"": pd.NA})
    df["image"] = df["image"].astype("string")
    cols = [*RESERVED_COLUMNS, *[c for c in df.columns if c not in RESERVED_COLUMNS]]
    return df[cols]


def _flags(df: pd.DataFrame, source) -> pd.Series:
    """The ``synthetic`` column as booleans (true/false, 1/0, yes/no; empty is real)."""
    text = df[SYNTHETIC_COLUMN].astype("string").fillna("").str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        raise InputDataError(source, f"column {SYNTHETIC_COLUMN!r} must be true or false, got "
                             f"{sorted(set(df.loc[bad, SYNTHETIC_COLUMN].astype(str)))[:5]} for case(s) "
                             f"{df.loc[bad, 'case_id'].tolist()[:5]}")
    return text.isin(_TRUE).astype(bool)


def sidecar_path(manifest_csv: str | Path) -> Path:
    p = Path(manifest_csv)
    return p.with_name(p.stem + ".cohort.json")


def _map_paths(ref, fn):
    """Apply ``fn`` to the path part of every channel of an ``image`` / ``label`` cell."""
    if not isinstance(ref, str) or not ref:
        return ref
    out = []
    for part in split_channels(ref):
        path, _, key = part.partition(KEY_SEP)
        out.append(fn(Path(path)) + (KEY_SEP + key if key else ""))
    return CHANNEL_SEP.join(out)


def _relativise(ref, base: Path):
    def rel(p: Path) -> str:
        try:
            return p.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:  # outside the manifest's folder: keep it absolute
            return p.resolve().as_posix()

    return _map_paths(ref, rel)


def _absolutise(ref, base: Path):
    return _map_paths(ref, lambda p: str(p if p.is_absolute() else base / p))


def write_manifest(cohort: Cohort, path: str | Path) -> Path:
    """Write ``cohort`` as ``path`` (CSV, paths relative to it) and its JSON sidecar, atomically."""
    path = Path(path)
    base = path.parent
    df = cohort.cases.copy()
    for col in ("image", "label"):
        df[col] = df[col].map(lambda r: _relativise(r, base) if isinstance(r, str) else r)
    info = {
        "format_version": 1,
        "name": cohort.name,
        "kind": cohort.kind,
        "classes": {k: list(v) for k, v in cohort.classes.items()},
        "attributes": cohort.attributes,
        "notes": cohort.notes,
    }
    write_csv_atomic(path, df)
    write_text_atomic(sidecar_path(path), json.dumps(info, indent=2) + "\n")
    return path


def infer_kind(cases: pd.DataFrame) -> str:
    """Guess a cohort's kind from its first image reference (used without a sidecar)."""
    first = split_channels(cases["image"].iloc[0])[0].lower() if len(cases) else ""
    if ".npz" in first:
        key = first.split(KEY_SEP, 1)[1] if KEY_SEP in first else ""
        return "fairdomain" if "oct" in key else "fairseg"
    if first.endswith(NIFTI.suffixes):
        return "nifti"
    return "image2d"


def read_manifest(path: str | Path, *, check_files: bool = True) -> Cohort:
    """Read a manifest CSV (and its sidecar, if present) into a :class:`Cohort`.

    Raises
    ------
    InputDataError
        The file is missing or not a readable CSV, a required column is missing, ids repeat,
        or (with ``check_files``) a referenced file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "manifest file does not exist")
    try:
        df = pd.read_csv(path, dtype={"case_id": str, "image": str, "label": str, "split": str},
                         keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputDataError(path, f"not a readable CSV manifest ({exc})") from exc
    df = restore_formulas(df)  # cells written as '=... by write_manifest
    base = path.parent
    for col in ("image", "label"):
        if col in df.columns:
            df[col] = df[col].map(lambda r: _absolutise(r, base))
    info = {}
    side = sidecar_path(path)
    if side.is_file():
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputDataError(side, f"corrupt cohort sidecar ({exc})") from exc
    if "case_id" in df.columns and "image" in df.columns and len(df) == 0:
        raise InputDataError(path, "the manifest has no cases")
    kind = info.get("kind") or (infer_kind(df) if "image" in df.columns else "nifti")
    cohort = Cohort(cases=df, kind=kind, classes=info.get("classes") or {},
                    name=info.get("name", path.stem), notes=list(info.get("notes", [])), source=path)
    if check_files:
        cohort.check_files()
    return cohort


def merge_cohorts(cohorts: Sequence[Cohort], *, name: str) -> Cohort:
    """One cohort listing the cases of several (of one kind, with the same classes).

    Splits and attributes are kept as they are (a column one cohort lacks is empty for its
    cases); write it with :func:`write_manifest` to train on all of them at once.

    Raises
    ------
    InputDataError
        Different kinds or classes, or a case id in more than one cohort.
    """
    if not cohorts:
        raise ValueError("merge_cohorts needs at least one cohort")
    first = cohorts[0]
    for other in cohorts[1:]:
        if (other.kind, other.classes) != (first.kind, first.classes):
            raise InputDataError(other.source, f"cannot merge a {other.kind} cohort with classes {other.classes} "
                                 f"into a {first.kind} one with classes {first.classes}")
    cases = pd.concat([c.cases for c in cohorts], ignore_index=True)
    repeated = sorted(set(cases.loc[cases["case_id"].duplicated(), "case_id"]))
    if repeated:
        raise InputDataError(None, f"case ids in more than one cohort: {repeated[:5]}")
    notes = [f"merged from {', '.join(c.name for c in cohorts)}"] + [n for c in cohorts for n in c.notes]
    return Cohort(cases, first.kind, dict(first.classes), name, notes)


def refuse_overwriting_inputs(out: str | Path, cohort: Cohort, *, also=()) -> None:
    """Raise before a job writes to ``out`` if that would overwrite what it reads.

    ``out`` (an output folder or file) must not be an input file of ``cohort`` (manifest,
    sidecar, images, labels) or of ``also``, must not hold one at any depth, and must not be
    the cohort's folder. Call it before any work, as ``predict_pool_job`` and the CLI do.

    Raises
    ------
    InputDataError
        Naming ``out`` and the first input it would overwrite.
    """
    target = Path(out).resolve()
    src = Path(cohort.source).resolve() if cohort.source is not None else None
    if src is not None and target in (src, src.parent if src.is_file() else src):
        raise InputDataError(out, "is the cohort's own folder: writing there would overwrite or mix with its "
                             "files; choose an output folder outside the cohort")
    lexical = Path(os.path.abspath(out))  # an input reached through a link in the folder counts too
    hits = [p for p in (*cohort.input_files(), *map(Path, also))
            if p.resolve().is_relative_to(target) or Path(os.path.abspath(p)).is_relative_to(lexical)]
    if hits:
        raise InputDataError(out, f"writing here would overwrite the inputs: {len(hits)} input file(s) lie in it, "
                             f"e.g. {hits[0]}; choose an output folder outside the cohort's files")


def read_table(path: str | Path, *, sheet: str | int | None = None) -> pd.DataFrame:
    """Read a metadata table (CSV, TSV or XLSX) with a clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "metadata table does not exist")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            return pd.read_excel(path, sheet_name=sheet if sheet is not None else 0)
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return pd.read_csv(path, sep=sep)
    except ValueError as exc:  # bad sheet name, bad xlsx
        raise InputDataError(path, f"cannot read metadata table: {exc}") from exc
    except Exception as exc:  # zip / xml errors of a corrupt xlsx, CSV parser errors
        raise InputDataError(path, f"cannot read metadata table: {exc}") from exc


def id_column(table: pd.DataFrame, *, source=None, preferred=("case_id", "patient_id", "pid", "id")) -> str:
    """The column of a metadata table that holds case ids."""
    lower = {c.lower(): c for c in table.columns}
    for name in preferred:
        if name in lower:
            return lower[name]
    raise InputDataError(source, f"metadata table has no case id column (looked for {list(preferred)}; "
                         f"columns: {list(table.columns)})")


def join_metadata(cases: pd.DataFrame, table: pd.DataFrame, *, source=None, id_col: str | None = None
                  ) -> tuple[pd.DataFrame, list[str]]:
    """Join a metadata table onto cases by case id, ignoring case.

    Returns the joined cases and notes about unmatched rows: metadata rows with no image and
    images with no metadata are *reported*, never silently dropped (the latter stay, with
    unknown attributes).

    Raises
    ------
    InputDataError
        The table has no id column, or two of its rows name the same case.
    """
    id_col = id_col or id_column(table, source=source)
    meta = table.copy()
    meta["_key"] = meta[id_col].astype("string").str.strip().str.lower()
    dup = meta["_key"][meta["_key"].duplicated(keep=False)]
    if len(dup):
        raise InputDataError(source, f"metadata rows repeat case ids: {sorted(meta.loc[dup.index, id_col].astype(str).unique())[:10]}")
    meta = meta.drop(columns=[id_col])
    clash = [c for c in meta.columns if c in RESERVED_COLUMNS and c != "split"]
    if clash:
        raise InputDataError(source, f"metadata columns {clash} clash with manifest columns")
    out = cases.copy()
    out["_key"] = out["case_id"].astype("string").str.lower()
    if "split" in meta.columns and "split" in out.columns:
        # the cohort's own splits (manifest, split lists, folders) win over the table's
        if out["split"].notna().any():
            meta = meta.drop(columns=["split"])
        else:
            out = out.drop(columns=["split"])
    merged = out.merge(meta, on="_key", how="left", indicator=True)
    notes = []
    no_meta = merged.loc[merged["_merge"] == "left_only", "case_id"].tolist()
    if no_meta:
        notes.append(f"{len(no_meta)} case(s) have no metadata row (attributes unknown): {no_meta[:10]}")
    matched = set(merged["_key"])
    no_image = table.loc[~meta["_key"].isin(matched).to_numpy(), id_col].astype(str).tolist()
    if no_image:
        notes.append(f"{len(no_image)} metadata row(s) have no image: {no_image[:10]}")
    return merged.drop(columns=["_key", "_merge"]), notes
