"""The labelling project: a folder with an embedded SQLite database (WAL) and versioned files.

Layout::

    <project>/project.sqlite        cases, annotations, rounds, suggestions, models, meta
    <project>/annotations/<case>/v0001.nii.gz   (or .npz / .png: the cohort's own format)
    <project>/models/                checkpoints of each round

Nothing is overwritten: every saved annotation is a new version with author, time, sha256 and
source (``human``, ``model`` pre-fill accepted as is, ``imported``). A save writes the file
atomically (temporary file + rename) and then records it in one transaction, so a process
killed at any moment leaves the database readable and every recorded version intact; a file
whose transaction never committed is an orphan that reopening ignores.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import label_key, load_image, load_label_file, prediction_path, save_label
from ..data.manifest import KEY_SEP, Cohort
from ..data.readers import open_cohort
from ..errors import InputDataError

SCHEMA_VERSION = 1
SOURCES = ("human", "model", "imported")
DB_NAME = "project.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY, split TEXT NOT NULL, attributes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY, case_id TEXT NOT NULL REFERENCES cases(case_id), version INTEGER NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, author TEXT NOT NULL, source TEXT NOT NULL,
    created TEXT NOT NULL, UNIQUE (case_id, version));
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, started TEXT NOT NULL, finished TEXT, strategy TEXT, batch INTEGER,
    checkpoint TEXT, metrics TEXT);
CREATE TABLE IF NOT EXISTS suggestions (
    round_id INTEGER NOT NULL REFERENCES rounds(id), case_id TEXT NOT NULL REFERENCES cases(case_id),
    rank INTEGER NOT NULL, score REAL, grp TEXT, group_weight REAL, PRIMARY KEY (round_id, case_id));
"""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Project:
    """An open labelling project (use :meth:`create` or :meth:`open`)."""

    def __init__(self, root: Path, cohort: Cohort, db: sqlite3.Connection):
        self.root, self.cohort, self.db = root, cohort, db

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, root: str | Path, cohort: Cohort, *, import_labels: bool = False,
               author: str = "import") -> Project:
        """A new project on ``cohort`` (its manifest path is recorded, its cases imported).

        With ``import_labels`` the cohort's existing labels become version 1 (source
        ``imported``); otherwise every case starts unlabelled.
        """
        root = Path(root)
        if (root / DB_NAME).exists():
            raise InputDataError(root, "a project already exists here; open it instead")
        if cohort.source is None:
            raise InputDataError(None, "the cohort has no source path to record; write its manifest first")
        root.mkdir(parents=True, exist_ok=True)
        db = _connect(root / DB_NAME)
        db.executescript(SCHEMA)  # (executescript commits on its own; the rows below are one transaction)
        with _transaction(db):
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT INTO meta VALUES ('cohort', ?)", (str(cohort.source),))
            db.execute("INSERT INTO meta VALUES ('created', ?)", (_now(),))
            attrs = cohort.attributes
            rows = [(r["case_id"], str(r["split"]),
                     json.dumps({a: (None if pd.isna(r[a]) else (r[a].item() if hasattr(r[a], "item") else r[a]))
                                 for a in attrs}))
                    for _, r in cohort.cases.iterrows()]
            db.executemany("INSERT INTO cases VALUES (?, ?, ?)", rows)
        project = cls(root, cohort, db)
        if import_labels:
            for cid in cohort.case_ids:
                ref = cohort.row(cid)["label"]
                if isinstance(ref, str) and ref:
                    case = load_image(cohort, cid)
                    project.save_annotation(cid, load_label_file(cohort, ref, expect=case), author=author,
                                            source="imported")
        return project

    @classmethod
    def open(cls, root: str | Path) -> Project:
        """Reopen a project exactly where it stopped."""
        root = Path(root)
        if not (root / DB_NAME).is_file():
            raise InputDataError(root, f"no labelling project here (missing {DB_NAME})")
        db = _connect(root / DB_NAME)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise InputDataError(root / DB_NAME, f"project database unreadable: {exc}") from exc
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            raise InputDataError(root, "project was written by a newer napari-fairseg; upgrade the package")
        return cls(root, open_cohort(meta["cohort"]), db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ annotations
    def save_annotation(self, case_id: str, label: np.ndarray, *, author: str, source: str = "human") -> int:
        """Store ``label`` ``(*S)`` as the next version of ``case_id``'s annotation; returns the version."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not author:
            raise ValueError("an annotation needs an author")
        if self.db.execute("SELECT 1 FROM cases WHERE case_id = ?", (case_id,)).fetchone() is None:
            raise InputDataError(self.root, f"case {case_id!r} is not in this project")
        label = np.asarray(label)
        values = set(np.unique(label).tolist()) - {0}
        allowed = {v for vals in self.cohort.classes.values() for v in vals}
        if values - allowed:
            raise InputDataError(case_id, f"annotation holds label values {sorted(values - allowed)} that the "
                                 f"cohort's classes do not use ({sorted(allowed)})")
        version = 1 + (self.db.execute("SELECT COALESCE(MAX(version), 0) FROM annotations WHERE case_id = ?",
                                       (case_id,)).fetchone()[0])
        # the cohort's own file naming (NIfTI, npz or PNG), as for predictions
        rel = prediction_path(self.cohort, self.root / "annotations" / case_id,
                              f"v{version:04d}").relative_to(self.root)
        like = load_image(self.cohort, case_id)
        save_label(self.cohort, self.root / rel, label, like=like)  # atomic: temp file + rename
        digest = sha256_file(self.root / rel)
        with _transaction(self.db):
            self.db.execute("INSERT INTO annotations (case_id, version, path, sha256, author, source, created) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (case_id, version, str(rel), digest, author, source, _now()))
        return version

    def history(self, case_id: str | None = None) -> pd.DataFrame:
        """Every recorded annotation version (of one case, or all), oldest first."""
        q = "SELECT case_id, version, path, sha256, author, source, created FROM annotations"
        args: tuple = ()
        if case_id is not None:
            q, args = q + " WHERE case_id = ?", (case_id,)
        return pd.read_sql_query(q + " ORDER BY case_id, version", self.db, params=args)

    def load_annotation(self, case_id: str, version: int | None = None) -> np.ndarray:
        """A version (default: the latest) as a class map, checked against its recorded sha256."""
        h = self.history(case_id)
        if h.empty:
            raise InputDataError(case_id, "case has no annotation yet")
        row = h.iloc[-1] if version is None else h[h["version"] == version]
        if isinstance(row, pd.DataFrame):
            if row.empty:
                raise InputDataError(case_id, f"no annotation version {version}")
            row = row.iloc[0]
        path = self.root / row["path"]
        if not path.is_file() or sha256_file(path) != row["sha256"]:
            raise InputDataError(path, "annotation file is missing or differs from its recorded checksum")
        ref = str(path)
        if self.cohort.kind in ("fairseg", "fairdomain"):
            ref += KEY_SEP + label_key(self.cohort, case_id)
        return load_label_file(self.cohort, ref, expect=load_image(self.cohort, case_id))

    def status(self) -> pd.DataFrame:
        """One row per case: split, attributes, ``labelled`` and the latest version number."""
        cases = pd.read_sql_query("SELECT case_id, split, attributes FROM cases ORDER BY case_id", self.db)
        latest = pd.read_sql_query("SELECT case_id, MAX(version) AS version FROM annotations GROUP BY case_id",
                                   self.db)
        attrs = pd.DataFrame([json.loads(a) for a in cases.pop("attributes")], index=cases.index)
        out = pd.concat([cases, attrs], axis=1).merge(latest, on="case_id", how="left")
        out["labelled"] = out["version"].notna()
        return out

    def orphans(self) -> list[Path]:
        """Files under ``annotations/`` that no committed version records (a save killed mid-way:
        a temporary ``.part`` file, or a complete file whose transaction never committed)."""
        known = set(self.history()["path"])
        found = (self.root / "annotations").rglob("*") if (self.root / "annotations").is_dir() else []
        return sorted(p for p in found if p.is_file() and str(p.relative_to(self.root)) not in known)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def _transaction(db: sqlite3.Connection):
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
