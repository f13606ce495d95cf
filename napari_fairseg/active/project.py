"""The labelling project: a folder with an embedded SQLite database (WAL) and versioned files.

Layout::

    <project>/project.sqlite        cases, annotations, rounds, suggestions, models, meta
    <project>/annotations/<case>/v0001.nii.gz   (or .npz / .png: the cohort's own format)
    <project>/models/                checkpoints of each round

Nothing is overwritten: every saved annotation is a new version with author, time, sha256 and
source (``human``, ``model`` pre-fill accepted as is, ``imported``). A save writes the file
under a unique temporary name, then, inside one write transaction, reserves the next version
number, gives the complete file its version's name with a hard link (which fails rather than
replace an existing file) and records it. Two writers on one case therefore get two versions,
and a process killed at any moment leaves the database readable and every recorded version
intact; a file whose transaction never committed is an orphan that reopening ignores. A
round's model name is reserved the same way (:meth:`Project.reserve_round`,
:meth:`Project.claim_round_model`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import label_ref, load_image, load_label_file, prediction_path, save_label
from ..data.atomic import FILE_MODE, OUTPUT_MARKER, check_inside, mark_output, write_csv_atomic
from ..data.manifest import Cohort, refuse_overwriting_inputs, write_manifest
from ..data.readers import open_cohort
from ..errors import InputDataError
from ..options import LABEL_SOURCES as SOURCES

SCHEMA_VERSION = 1
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


def utc_now() -> str:
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
               author: str = "import", metadata: str | Path | None = None) -> Project:
        """A new project on ``cohort`` (its path is recorded, its cases imported).

        The cohort's source (a manifest or any dataset folder the readers know) and the
        ``metadata`` table it was opened with are recorded and reopened with
        :func:`~napari_fairseg.data.readers.open_cohort`. With ``import_labels`` the cohort's
        existing labels become version 1 (source ``imported``); otherwise every case starts
        unlabelled. See :func:`create_project` to start from a path.
        """
        root = Path(root)
        if (root / DB_NAME).exists():
            raise InputDataError(root, "a project already exists here; open it instead")
        if cohort.source is None:
            raise InputDataError(None, "the cohort has no source path to record; write its manifest first")
        # never inside what it labels: the cohort's folder or a folder holding its files would
        # mix annotations with images (and the cohort could lose cases to the project's folder)
        refuse_overwriting_inputs(root, cohort)
        created = not root.exists()
        mark_output(root)  # its annotations are never read as a cohort's own files
        db = _connect(root / DB_NAME)
        db.executescript(SCHEMA)  # (executescript commits on its own; the rows below are one transaction)
        with _transaction(db):
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT INTO meta VALUES ('cohort', ?)", (str(Path(cohort.source).resolve()),))
            if metadata is not None:
                db.execute("INSERT INTO meta VALUES ('cohort_metadata', ?)", (str(Path(metadata).resolve()),))
            # a folder of the user's own images carries its declared classes nowhere on disk
            db.execute("INSERT INTO meta VALUES ('cohort_classes', ?)",
                       (json.dumps({k: list(v) for k, v in cohort.classes.items()}),))
            db.execute("INSERT INTO meta VALUES ('created', ?)", (utc_now(),))
            attrs = cohort.attributes
            rows = [(r["case_id"], str(r["split"]),
                     json.dumps({a: (None if pd.isna(r[a]) else (r[a].item() if hasattr(r[a], "item") else r[a]))
                                 for a in attrs}))
                    for _, r in cohort.cases.iterrows()]
            db.executemany("INSERT INTO cases VALUES (?, ?, ?)", rows)
        project = cls(root, cohort, db)
        if import_labels:
            try:
                project.import_labels(cohort, author=author)
            except BaseException:  # all or nothing: no half-made project is left to reopen
                project.close()
                _remove_new_project(root, created)
                raise
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
            db.close()
            raise InputDataError(root / DB_NAME, NOT_A_PROJECT) from exc
        if "cohort" not in meta:
            db.close()
            raise InputDataError(root / DB_NAME, NOT_A_PROJECT)
        if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
            db.close()
            raise InputDataError(root, "project was written by a newer napari-fairseg; upgrade the package")
        try:
            classes = {k: tuple(v) for k, v in json.loads(meta.get("cohort_classes") or "{}").items()} or None
            cohort = open_cohort(meta["cohort"], metadata=meta.get("cohort_metadata"), classes=classes)
        except BaseException:
            db.close()
            raise
        return cls(root, cohort, db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ annotations
    def save_annotation(self, case_id: str, label: np.ndarray, *, author: str, source: str = "human",
                        _hook: Callable[[str], None] | None = None) -> int:
        """Store ``label`` ``(*S)`` as the next version of ``case_id``'s annotation; returns the version.

        The file is written under a unique temporary name first; the version number is reserved,
        the file named and the row recorded inside one write transaction, so concurrent writers
        never share a version or a file. ``_hook`` (fault injection for tests) is called with
        ``"written"`` (temporary file complete, nothing reserved), ``"published"`` (file under
        its version's name, transaction open) and ``"recorded"`` (row inserted, before commit).
        """
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
        like = load_image(self.cohort, case_id)
        if tuple(label.shape) != like.spatial_shape:
            raise InputDataError(case_id, f"label shape {label.shape} does not match image shape "
                                 f"{like.spatial_shape}")
        step = _hook or (lambda _name: None)
        folder = self.root / "annotations" / case_id
        if folder.is_symlink() or (folder.exists() and not self._inside(folder / "v")):
            raise InputDataError(folder, "the case's annotation folder is a link or leads outside the project: "
                                 "refusing to write through it")
        # the cohort's own file format (NIfTI, npz or PNG), as for predictions
        suffix = prediction_path(self.cohort, folder, "v").name[1:]
        tmp = folder / f".v-{uuid.uuid4().hex}.part{suffix}"
        final: Path | None = None
        try:
            save_label(self.cohort, tmp, label, like=like)  # complete and fsynced before it gets a name
            digest = sha256_file(tmp)
            step("written")
            with _transaction(self.db):  # holds the write lock: no other writer reserves meanwhile
                version = 1 + (self.db.execute("SELECT COALESCE(MAX(version), 0) FROM annotations "
                                               "WHERE case_id = ?", (case_id,)).fetchone()[0])
                final = _first_free(folder / f"v{version:04d}{suffix}", lambda dest: _publish(tmp, dest))
                _fsync_dir(folder)
                step("published")
                self.db.execute("INSERT INTO annotations (case_id, version, path, sha256, author, source, created) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (case_id, version, str(final.relative_to(self.root)), digest, author, source,
                                 utc_now()))
                step("recorded")
        except BaseException:
            if final is not None:  # ours, never recorded: no other writer can have taken this name
                final.unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return version

    def history(self, case_id: str | None = None) -> pd.DataFrame:
        """Every recorded annotation version (of one case, or all), oldest first."""
        q = "SELECT case_id, version, path, sha256, author, source, created FROM annotations"
        args: tuple = ()
        if case_id is not None:
            q, args = q + " WHERE case_id = ?", (case_id,)
        return pd.read_sql_query(q + " ORDER BY case_id, version", self.db, params=args)

    def _checked_ref(self, case_id: str, row) -> str:
        """The file reference of a recorded version after checking its sha256."""
        path = self.root / row["path"]
        if not self._inside(path):
            raise InputDataError(path, "the project records an annotation outside its folder: refused")
        if not path.is_file() or sha256_file(path) != row["sha256"]:
            raise InputDataError(path, "annotation file is missing or differs from its recorded checksum")
        return label_ref(self.cohort, path, case_id)

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
        return load_label_file(self.cohort, self._checked_ref(case_id, row),
                               expect=load_image(self.cohort, case_id))

    def latest(self) -> pd.DataFrame:
        """The latest recorded version of every annotated case (``case_id``, ``version``, ``path``, …)."""
        h = self.history()
        return h.groupby("case_id", sort=True).tail(1).reset_index(drop=True)

    def working_cohort(self, *, cohort_labels: bool = False) -> Cohort:
        """The project's cohort with each case's label set to its latest annotation.

        Every latest file is checked against its sha256 first. Cases without an annotation keep
        the cohort's own label with ``cohort_labels`` (a held-out split labelled elsewhere), or
        have none.
        """
        cases = self.cohort.cases.copy()
        if not cohort_labels:
            cases["label"] = ""
        refs = {r["case_id"]: self._checked_ref(r["case_id"], r) for _, r in self.latest().iterrows()}
        cases["label"] = [refs.get(c, lab) for c, lab in zip(cases["case_id"], cases["label"], strict=True)]
        return Cohort(cases, self.cohort.kind, self.cohort.classes, self.cohort.name, list(self.cohort.notes),
                      self.cohort.source)

    def import_labels(self, source: Cohort, *, author: str = "import", overwrite: bool = False) -> list[str]:
        """Store the labels of ``source`` (a manifest of the same cases) as ``imported`` versions.

        Cases of ``source`` that the project lacks are an error; cases that already have an
        annotation are skipped unless ``overwrite`` (which adds a new version, never replaces).
        Returns the imported case ids.
        """
        unknown = sorted(set(source.case_ids) - set(self.cohort.case_ids))
        if unknown:
            raise InputDataError(source.source, f"{len(unknown)} case(s) are not in this project: {unknown[:5]}")
        have = set(self.latest()["case_id"])
        done = []
        for cid in source.case_ids:
            ref = source.row(cid)["label"]
            if not (isinstance(ref, str) and ref) or (cid in have and not overwrite):
                continue
            label = load_label_file(source, ref, expect=load_image(self.cohort, cid))
            self.save_annotation(cid, label, author=author, source="imported")
            done.append(cid)
        return done

    def verify(self) -> pd.DataFrame:
        """Every recorded annotation version whose file is missing or differs from its sha256.

        Returns
        -------
        pandas.DataFrame
            ``case_id``, ``version``, ``path`` (absolute) and ``problem`` (``outside the project``,
            ``missing`` or ``checksum differs``); empty when every version of every case is intact.
        """
        rows = []
        for r in self.history().itertuples(index=False):
            path = self.root / r.path
            if not self._inside(path):
                rows.append((r.case_id, int(r.version), str(path), "outside the project"))
            elif not path.is_file():
                rows.append((r.case_id, int(r.version), str(path), "missing"))
            elif sha256_file(path) != r.sha256:
                rows.append((r.case_id, int(r.version), str(path), "checksum differs"))
        return pd.DataFrame(rows, columns=["case_id", "version", "path", "problem"])

    def _inside(self, path: Path) -> bool:
        """Whether a recorded file resolves inside ``annotations/`` (links and ``..`` followed):
        rows injected into the database cannot make the project read or export other files."""
        return path.resolve().is_relative_to((self.root / "annotations").resolve())

    def status(self, *, damaged: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per case: split, attributes, ``labelled``, the latest version number and
        ``tampered`` (how many of its recorded versions fail their checksum, see :meth:`verify`).

        ``damaged`` is a :meth:`verify` result already computed (to hash the files once).
        """
        cases = pd.read_sql_query("SELECT case_id, split, attributes FROM cases ORDER BY case_id", self.db)
        latest = pd.read_sql_query("SELECT case_id, MAX(version) AS version FROM annotations GROUP BY case_id",
                                   self.db)
        attrs = pd.DataFrame([json.loads(a) for a in cases.pop("attributes")], index=cases.index)
        out = pd.concat([cases, attrs], axis=1).merge(latest, on="case_id", how="left")
        out["labelled"] = out["version"].notna()
        damaged = self.verify() if damaged is None else damaged
        counts = damaged["case_id"].value_counts()
        out["tampered"] = out["case_id"].map(counts).fillna(0).astype(int)
        return out

    # ------------------------------------------------------------------ rounds
    def next_round_id(self) -> int:
        """The id the next reserved round will most likely get (for display)."""
        return 1 + self.db.execute("SELECT COALESCE(MAX(id), 0) FROM rounds").fetchone()[0]

    def reserve_round(self, started: str) -> int:
        """Reserve the next round id (an unfinished row that :meth:`rounds` does not list).

        Concurrent rounds get distinct ids, hence distinct model files and seeds. Finish it with
        :meth:`record_round` (``round_id=``) or give it back with :meth:`release_round`.
        """
        with _transaction(self.db):
            return int(self.db.execute("INSERT INTO rounds (started) VALUES (?)", (started,)).lastrowid)

    def release_round(self, round_id: int) -> None:
        """Forget a reserved round that did not finish (a failed or cancelled round)."""
        with _transaction(self.db):
            self.db.execute("DELETE FROM rounds WHERE id = ? AND finished IS NULL", (round_id,))

    def claim_round_model(self, round_id: int) -> Path:
        """Create an empty ``models/round_<id>.pt`` for the round to write its model into.

        The name is created exclusively: a file already there (left by an older version or a
        killed process) is never replaced; the round takes ``round_<id>-2.pt`` and so on.
        """
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        return _first_free(self.root / "models" / f"round_{round_id:04d}.pt", _create_empty)

    def record_round(self, *, started: str, strategy: str | None, batch: int | None, checkpoint: str | Path | None,
                     metrics: dict, suggestions: pd.DataFrame | None = None, round_id: int | None = None) -> int:
        """Store a finished round, its metrics and its ranked suggestions in one transaction.

        ``suggestions`` has ``case_id``, ``score``, ``group`` and ``group_weight`` in rank order.
        ``checkpoint`` is stored relative to the project when it lies inside it. ``round_id``
        finishes a round reserved with :meth:`reserve_round`; without it a new id is taken.
        """
        ckpt = None
        if checkpoint is not None:
            ckpt = Path(checkpoint)
            ckpt = str(ckpt.relative_to(self.root)) if ckpt.is_relative_to(self.root) else str(ckpt)
        values = (started, utc_now(), strategy, batch, ckpt, json.dumps(_plain(metrics)))
        with _transaction(self.db):
            if round_id is None:
                cur = self.db.execute("INSERT INTO rounds (started, finished, strategy, batch, checkpoint, metrics) "
                                      "VALUES (?, ?, ?, ?, ?, ?)", values)
                rid = int(cur.lastrowid)
            else:
                cur = self.db.execute("UPDATE rounds SET started = ?, finished = ?, strategy = ?, batch = ?, "
                                      "checkpoint = ?, metrics = ? WHERE id = ? AND finished IS NULL",
                                      (*values, round_id))
                if cur.rowcount != 1:
                    raise InputDataError(self.root, f"round {round_id} is not a reserved, unfinished round")
                rid = round_id
            if suggestions is not None and len(suggestions):
                self.db.executemany(
                    "INSERT INTO suggestions VALUES (?, ?, ?, ?, ?, ?)",
                    [(rid, r.case_id, rank, _num(r.score), str(r.group), _num(r.group_weight))
                     for rank, r in enumerate(suggestions.itertuples(index=False), start=1)])
        return rid

    def rounds(self) -> pd.DataFrame:
        """One row per finished round: id, times, strategy, batch, checkpoint and its metrics."""
        r = pd.read_sql_query("SELECT id, started, finished, strategy, batch, checkpoint, metrics FROM rounds "
                              "WHERE finished IS NOT NULL ORDER BY id", self.db)
        metrics = pd.DataFrame([json.loads(m) for m in r.pop("metrics")], index=r.index)
        return pd.concat([r, metrics], axis=1)

    def checkpoint_path(self, round_id: int | None = None) -> Path | None:
        """The model of a round (default: the latest round that has one)."""
        q = "SELECT checkpoint FROM rounds WHERE checkpoint IS NOT NULL AND finished IS NOT NULL"
        row = (self.db.execute(q + " AND id = ?", (round_id,)) if round_id is not None
               else self.db.execute(q + " ORDER BY id DESC LIMIT 1")).fetchone()
        return None if row is None else self.root / row[0]

    def suggestions(self, round_id: int | None = None) -> pd.DataFrame:
        """A round's ranked suggestions (default: the latest round that made some), with each
        case's current ``labelled`` status."""
        if round_id is None:
            row = self.db.execute("SELECT MAX(round_id) FROM suggestions").fetchone()
            round_id = row[0]
        s = pd.read_sql_query("SELECT round_id, rank, case_id, score, grp AS 'group', group_weight FROM suggestions "
                              "WHERE round_id = ? ORDER BY rank", self.db, params=(round_id,))
        s["labelled"] = s["case_id"].isin(set(self.latest()["case_id"]))
        return s

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the latest labels (cohort format), a manifest pointing to them, the version
        history, the rounds and every suggestion under ``out_dir``; returns the written paths.

        Raises
        ------
        InputDataError
            ``out_dir`` is the cohort's folder or holds an input file (an image, a label, the
            manifest, the metadata table, the project); or a recorded annotation version is
            missing or differs from its checksum. Nothing is written then.
        """
        out = Path(out_dir)
        refuse_overwriting_inputs(out, self.cohort, also=self._project_files())
        damaged = self.verify()
        if len(damaged):
            raise InputDataError(self.root, "refusing to export: annotation version(s) are missing or differ from "
                                 "their recorded checksum (" + _list_damaged(damaged) + ")")
        labels = mark_output(out) / "labels"
        labels.mkdir(parents=True, exist_ok=True)
        check_inside(labels / "x", out)  # a labels/ link would carry the export elsewhere
        cases = self.cohort.cases.copy()
        cases["label"] = ""
        for _, row in self.latest().iterrows():
            cid = row["case_id"]
            dest = prediction_path(self.cohort, out / "labels", cid)
            like = load_image(self.cohort, cid)
            save_label(self.cohort, dest, self.load_annotation(cid), like=like)
            cases.loc[cases["case_id"] == cid, "label"] = label_ref(self.cohort, dest, cid)
        written = {"manifest": write_manifest(Cohort(cases, self.cohort.kind, self.cohort.classes,
                                                     f"{self.cohort.name}-labels", list(self.cohort.notes)),
                                              out / "manifest.csv")}
        all_sugg = pd.read_sql_query("SELECT round_id, rank, case_id, score, grp AS 'group', group_weight "
                                     "FROM suggestions ORDER BY round_id, rank", self.db)
        for name, table in (("history", self.history()), ("rounds", self.rounds()), ("suggestions", all_sugg)):
            written[name] = out / f"{name}.csv"
            write_csv_atomic(written[name], table)
        return written

    def _project_files(self) -> list[Path]:
        """What the project reads beside the cohort: metadata table, database, annotations."""
        meta = self.db.execute("SELECT value FROM meta WHERE key = 'cohort_metadata'").fetchone()
        return [self.root / DB_NAME, *(self.root / p for p in self.history()["path"]), *([meta[0]] if meta else [])]

    def orphans(self) -> list[Path]:
        """Files under ``annotations/`` that no committed version records (a save killed mid-way:
        a temporary ``.part`` file, or a complete file whose transaction never committed)."""
        known = set(self.history()["path"])
        found = (self.root / "annotations").rglob("*") if (self.root / "annotations").is_dir() else []
        return sorted(p for p in found if p.is_file() and str(p.relative_to(self.root)) not in known)


NOT_A_PROJECT = "not a FairSeg project database (file is corrupt or not SQLite)"


def create_project(root: str | Path, cohort_path: str | Path, *, import_labels: bool = False,
                   metadata: str | Path | None = None, classes: dict | None = None,
                   author: str = "import") -> Project:
    """A new labelling project in ``root`` on the cohort at ``cohort_path``.

    Parameters
    ----------
    root : str or Path
        Project folder (created; must not hold a project yet).
    cohort_path : str or Path
        A manifest or any dataset folder :func:`~napari_fairseg.data.readers.open_cohort`
        knows (NIfTI, 2D images, FairSeg / FairDomain npz, MAMA-MIA); recorded and reopened.
    import_labels : bool
        The cohort's labels become version 1 of each case (source ``imported``).
    metadata : str or Path, optional
        Metadata table joined by case id (recorded with the cohort).
    classes : dict, optional
        What the mask values mean (name → label values), when the kind's default does not fit.
    author : str
        Author recorded for imported labels.
    """
    cohort = open_cohort(cohort_path, metadata=metadata, classes=classes)
    return Project.create(root, cohort, import_labels=import_labels, author=author, metadata=metadata)


def _remove_new_project(root: Path, created: bool) -> None:
    """Undo a project creation that failed: its database, annotations and marker (and the folder
    itself when the creation made it)."""
    import shutil

    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", OUTPUT_MARKER):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "annotations", ignore_errors=True)
    if created:
        shutil.rmtree(root, ignore_errors=True)


def _list_damaged(damaged: pd.DataFrame, limit: int = 10) -> str:
    items = [f"{r.case_id} v{r.version} {r.problem}" for r in damaged.head(limit).itertuples(index=False)]
    return ", ".join(items) + (f", and {len(damaged) - limit} more" if len(damaged) > limit else "")


def _first_free(path: Path, create: Callable[[Path], None]) -> Path:
    """Create ``path`` with ``create`` or, when that name is taken, the first free
    ``<stem>-2<suffixes>``, ``-3``, …; returns the created name.

    ``create`` must raise :class:`FileExistsError` rather than replace an existing file.
    """
    stem, dot, rest = path.name.partition(".")
    for k in itertools.count(1):
        candidate = path if k == 1 else path.with_name(f"{stem}-{k}{dot}{rest}")
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def _publish(src: Path, dest: Path) -> None:
    """Give the complete file ``src`` the name ``dest``, failing if ``dest`` exists."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this filesystem: claim the name exclusively, then fill it
        _create_empty(dest)
        os.replace(src, dest)


def _create_empty(dest: Path) -> None:
    os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))


def _fsync_dir(folder: Path) -> None:
    """Make a new name in ``folder`` durable before the transaction that records it commits."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _num(v) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def _plain(metrics: dict) -> dict:
    """JSON-safe scalars (numpy numbers become Python numbers, NaN becomes null)."""
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        out[k] = None if isinstance(v, float) and v != v else v
    return out


def _connect(path: Path) -> sqlite3.Connection:
    # The GUI opens a project on its thread and runs rounds in a worker thread: the connection may
    # cross threads when the SQLite library is serialized (threadsafety 3, the usual build);
    # otherwise Python's same-thread check stays on and reports the misuse.
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30,
                         check_same_thread=sqlite3.threadsafety != 3)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise InputDataError(path, NOT_A_PROJECT) from exc
    return db


@contextmanager
def _transaction(db: sqlite3.Connection):
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
