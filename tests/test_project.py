"""The labelling project: versions, checksums, atomic saves, a killed writer, reopening."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_fairseg.active.project import Project, sha256_file
from napari_fairseg.data.arrays import load_case
from napari_fairseg.errors import InputDataError


@pytest.fixture
def project(tmp_path, tiny_brain):
    return Project.create(tmp_path / "proj", tiny_brain)


def test_versions_are_never_overwritten(project, tiny_brain):
    cid = tiny_brain.case_ids[0]
    truth = load_case(tiny_brain, cid).label
    assert project.save_annotation(cid, truth, author="ana", source="model") == 1
    edited = truth.copy()
    edited[0, 0, 0] = 1
    assert project.save_annotation(cid, edited, author="ben") == 2
    h = project.history(cid)
    assert list(h["version"]) == [1, 2] and list(h["author"]) == ["ana", "ben"]
    assert list(h["source"]) == ["model", "human"]
    np.testing.assert_array_equal(project.load_annotation(cid, 1), truth)
    np.testing.assert_array_equal(project.load_annotation(cid), edited)
    for p, digest in zip(h["path"], h["sha256"], strict=True):
        assert sha256_file(project.root / p) == digest
    st = project.status().set_index("case_id")
    assert st.loc[cid, "labelled"] and st.loc[cid, "version"] == 2
    assert st["labelled"].sum() == 1 and "group" in st.columns


def test_reopen_resumes_and_tampering_is_caught(project, tiny_brain):
    cid = tiny_brain.case_ids[1]
    project.save_annotation(cid, load_case(tiny_brain, cid).label, author="ana")
    root = project.root
    project.close()
    again = Project.open(root)
    assert list(again.history(cid)["version"]) == [1]
    assert again.save_annotation(cid, load_case(tiny_brain, cid).label, author="ana") == 2
    path = again.root / again.history(cid)["path"].iloc[-1]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputDataError, match="differs from its recorded checksum"):
        again.load_annotation(cid)
    np.testing.assert_array_equal(again.load_annotation(cid, 1), load_case(tiny_brain, cid).label)
    assert again.orphans() == []
    stray = again.root / "annotations" / cid / "v0009.nii.gz"
    stray.write_bytes(b"never committed")
    assert again.orphans() == [stray]


def test_bad_input(project, tiny_brain, tmp_path):
    cid = tiny_brain.case_ids[0]
    label = load_case(tiny_brain, cid).label
    with pytest.raises(InputDataError, match="not in this project"):
        project.save_annotation("nope", label, author="a")
    with pytest.raises(InputDataError, match=r"label values \[7\]"):
        project.save_annotation(cid, np.full_like(label, 7), author="a")
    with pytest.raises(InputDataError, match="does not match image shape"):
        project.save_annotation(cid, label[:-1], author="a")
    with pytest.raises(ValueError, match="source must be one of"):
        project.save_annotation(cid, label, author="a", source="guess")
    assert project.history(cid).empty  # nothing half-recorded
    with pytest.raises(InputDataError, match="no labelling project here"):
        Project.open(tmp_path / "empty")
    with pytest.raises(InputDataError, match="already exists"):
        Project.create(project.root, tiny_brain)


def test_import_labels(tmp_path, tiny_brain):
    p = Project.create(tmp_path / "imp", tiny_brain, import_labels=True)
    h = p.history()
    assert sorted(h["case_id"]) == sorted(tiny_brain.case_ids) and set(h["source"]) == {"imported"}


WRITER = r"""
import sys, numpy as np
from napari_fairseg.active.project import Project
from napari_fairseg.data.arrays import load_case
p = Project.open(sys.argv[1])
cid = sys.argv[2]
label = load_case(p.cohort, cid).label
i = 0
while True:
    i += 1
    lab = label.copy(); lab.flat[i % lab.size] = 1
    p.save_annotation(cid, lab, author="writer")
    print(i, flush=True)
"""


def test_a_killed_writer_leaves_the_project_intact(project, tiny_brain):
    cid = tiny_brain.case_ids[2]
    project.save_annotation(cid, load_case(tiny_brain, cid).label, author="ana")
    root = project.root
    project.close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), cid], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # let it commit a few versions, then kill it mid-flight
            assert proc.stdout.readline()
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(root / "project.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    again = Project.open(root)
    h = again.history(cid)
    assert len(h) >= 4 and list(h["version"]) == list(range(1, len(h) + 1))
    for v in h["version"]:  # every committed version is complete and matches its checksum
        again.load_annotation(cid, int(v))
    # the killed save can only have left a temporary file or the next, uncommitted version
    next_name = f"v{len(h) + 1:04d}.nii.gz"
    assert all(".part" in p.name or p.name == next_name for p in again.orphans()), again.orphans()
    assert again.save_annotation(cid, load_case(tiny_brain, cid).label, author="ana") == len(h) + 1


def test_import_labels_from_a_manifest(tmp_path, tiny_brain):
    from napari_fairseg.data.manifest import Cohort

    project = Project.create(tmp_path / "proj", tiny_brain)
    first = tiny_brain.case_ids[0]
    project.save_annotation(first, np.zeros_like(load_case(tiny_brain, first).label), author="ana")
    done = project.import_labels(tiny_brain, author="site-b")
    assert first not in done and len(done) == len(tiny_brain) - 1  # a labelled case is not overwritten
    h = project.history()
    assert set(h[h["case_id"] != first]["source"]) == {"imported"} and set(h["author"]) == {"ana", "site-b"}
    again = project.import_labels(tiny_brain, author="site-b", overwrite=True)
    assert len(again) == len(tiny_brain)  # overwrite adds a version, it never replaces
    assert list(project.history(first)["version"]) == [1, 2]
    np.testing.assert_array_equal(project.load_annotation(first, 1), 0)
    working = project.working_cohort()
    np.testing.assert_array_equal(load_case(working, first).label, load_case(tiny_brain, first).label)
    stranger = Cohort(tiny_brain.cases.assign(case_id=[f"x{i}" for i in range(len(tiny_brain))]), "nifti",
                      tiny_brain.classes, "other", source=tiny_brain.source)
    with pytest.raises(InputDataError, match="not in this project"):
        project.import_labels(stranger)


def test_the_labelling_database_opens_without_torch():
    # Every annotation save from another process (and each `fairseg project` command) imports
    # the project module: it must not pay ~1.5 s for torch, which only models need.
    code = "import sys, napari_fairseg.active.project; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------- rounds, export, cohorts
def _copy_cohort(tiny_brain, dest, classes=None):
    """The tiny brain cohort in a folder of its own (tests may change its files), optionally
    with classes of its own (not the kind's default)."""
    import shutil

    from napari_fairseg.data.manifest import Cohort
    from napari_fairseg.data.readers import open_cohort

    src = Path(tiny_brain.source)
    if src.is_dir():
        shutil.copytree(src, dest)
        c = open_cohort(dest)
    else:
        shutil.copytree(src.parent, dest)
        c = open_cohort(dest / src.name)
    if classes is None:
        return c
    return Cohort(c.cases, c.kind, classes, "renamed", ["a note"], c.source)


def test_rounds_keep_their_metrics_checkpoints_and_suggestions(project, tiny_brain, tmp_path):
    import json

    import pandas as pd

    ids = tiny_brain.case_ids
    assert project.checkpoint_path() is None and project.suggestions().empty
    rid = project.reserve_round("t0")
    assert rid == 1 and project.rounds().empty and project.next_round_id() == 2  # reserved, not finished
    model = project.claim_round_model(rid)  # a fresh project: models/ is made here
    assert model == project.root / "models" / "round_0001.pt" and model.stat().st_size == 0
    umask = os.umask(0)
    os.umask(umask)
    assert model.stat().st_mode & 0o777 == 0o666 & ~umask  # a data file, never executable
    sugg = pd.DataFrame({"case_id": [ids[3], ids[1]], "score": [0.9, np.float32(0.25)], "group": ["g1", "g0"],
                         "group_weight": [2.0, None]})
    metrics = {"dice": np.float32(0.5), "gap": float("nan"), "n": np.int64(3), "note": "ok"}
    assert project.record_round(started="t0", strategy="random", batch=2, checkpoint=model, metrics=metrics,
                                suggestions=sugg, round_id=rid) == rid
    elsewhere = tmp_path / "elsewhere.pt"
    assert project.record_round(started="t1", strategy="wle", batch=1, checkpoint=elsewhere, metrics={"dice": 0.75},
                                suggestions=sugg.iloc[::-1]) == 2
    assert project.record_round(started="t2", strategy=None, batch=None, checkpoint=None, metrics={},
                                suggestions=None) == 3
    with pytest.raises(InputDataError, match="round 1 is not a reserved, unfinished round"):
        project.record_round(started="t3", strategy=None, batch=None, checkpoint=None, metrics={}, round_id=rid)
    r = project.rounds()
    assert list(r["id"]) == [1, 2, 3] and list(r["strategy"][:2]) == ["random", "wle"]
    assert r["checkpoint"].iloc[0] == "models/round_0001.pt"  # inside the project: relative
    assert r["checkpoint"].iloc[1] == str(elsewhere)
    assert project.db.execute("SELECT checkpoint FROM rounds WHERE id = 3").fetchone()[0] is None  # not ""
    assert r["dice"].tolist()[:2] == [0.5, 0.75] and r["n"].iloc[0] == 3 and r["note"].iloc[0] == "ok"
    assert np.isnan(r["gap"].iloc[0])
    stored = project.db.execute("SELECT metrics FROM rounds WHERE id = 1").fetchone()[0]
    assert json.loads(stored, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {
        "dice": 0.5, "gap": None, "n": 3, "note": "ok"}  # strict JSON: NaN is stored as null
    # the latest round that has a model, or the one asked for
    assert project.checkpoint_path() == elsewhere
    assert project.checkpoint_path(1) == model and project.checkpoint_path(3) is None
    assert project.checkpoint_path(9) is None
    s = project.suggestions()  # the latest round that made some
    assert list(s["round_id"]) == [2, 2] and list(s["case_id"]) == [ids[1], ids[3]] and list(s["rank"]) == [1, 2]
    s1 = project.suggestions(1)
    assert list(s1["case_id"]) == [ids[3], ids[1]] and list(s1["group"]) == ["g1", "g0"]
    assert s1["score"].tolist() == [0.9, 0.25] and s1["group_weight"].iloc[0] == 2.0
    assert np.isnan(s1["group_weight"].iloc[1]) and not s1["labelled"].any()
    project.save_annotation(ids[1], load_case(tiny_brain, ids[1]).label, author="ana")
    assert project.suggestions(1)["labelled"].tolist() == [False, True]
    spare = project.reserve_round("t4")
    project.release_round(spare)
    assert project.next_round_id() == spare  # given back (and never listed)
    assert list(project.rounds()["id"]) == [1, 2, 3]


def test_export_writes_labels_manifest_and_tables(tmp_path, tiny_brain):
    import pandas as pd

    from napari_fairseg.data.readers import open_cohort

    cohort = _copy_cohort(tiny_brain, tmp_path / "c", classes={"caudate": (1,)})
    p = Project.create(tmp_path / "p", cohort)
    a, b, unlabelled = cohort.case_ids[1], cohort.case_ids[3], cohort.case_ids[0]
    la, lb = load_case(cohort, a).label, np.zeros_like(load_case(cohort, b).label)
    lb[1:4, 2:5, 3:6] = 1
    p.save_annotation(a, np.zeros_like(la), author="ana")
    p.save_annotation(a, la, author="ana")  # the latest version is exported
    p.save_annotation(b, lb, author="ben")
    p.record_round(started="t0", strategy="random", batch=1, checkpoint=None, metrics={"dice": 0.5},
                   suggestions=pd.DataFrame({"case_id": [b], "score": [1.0], "group": ["g"], "group_weight": [1.0]}))
    out = tmp_path / "exp"
    for _ in range(2):  # a second export refreshes the same folder
        written = p.export(out)
    assert written == {"manifest": out / "manifest.csv", "history": out / "history.csv",
                       "rounds": out / "rounds.csv", "suggestions": out / "suggestions.csv"}
    assert {q.name for q in out.iterdir() if not q.name.startswith(".")} == {
        "labels", "manifest.csv", "manifest.cohort.json", "history.csv", "rounds.csv", "suggestions.csv"}
    assert sorted(q.name for q in (out / "labels").iterdir()) == sorted([f"{a}.nii.gz", f"{b}.nii.gz"])
    exported = open_cohort(out / "manifest.csv")
    assert exported.classes == {"caudate": (1,)} and exported.name == "renamed-labels"
    assert exported.notes == ["a note"] and list(exported.case_ids) == list(cohort.case_ids)
    np.testing.assert_array_equal(load_case(exported, a).label, la)
    np.testing.assert_array_equal(load_case(exported, b).label, lb)
    assert load_case(exported, unlabelled).label is None  # not the cohort's own label
    assert exported.cases.set_index("case_id")["label"].drop([a, b]).fillna("").eq("").all()
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["case_id"]) == [a, a, b] and list(hist["version"]) == [1, 2, 1]
    assert pd.read_csv(out / "rounds.csv")["dice"].tolist() == [0.5]
    sugg = pd.read_csv(out / "suggestions.csv")
    assert list(sugg.columns) == ["round_id", "rank", "case_id", "score", "group", "group_weight"]
    assert sugg[["round_id", "rank", "case_id", "group"]].values.tolist() == [[1, 1, b, "g"]]


def test_export_refuses_the_folder_of_the_metadata_table(tmp_path, tiny_brain):
    from napari_fairseg.data.readers import open_cohort

    meta = tmp_path / "tables" / "meta.csv"
    meta.parent.mkdir()
    meta.write_text("case_id,site\n" + "".join(f"{c},s{i % 2}\n" for i, c in enumerate(tiny_brain.case_ids)))
    cohort = open_cohort(tiny_brain.source, metadata=meta)
    p = Project.create(tmp_path / "p", cohort, metadata=meta)
    before = meta.read_bytes()
    with pytest.raises(InputDataError, match="would overwrite the inputs"):
        p.export(meta.parent)
    assert sorted(q.name for q in meta.parent.iterdir()) == ["meta.csv"] and meta.read_bytes() == before


def test_a_refused_export_lists_the_first_ten_damaged_versions(project, tiny_brain, tmp_path):
    cid = tiny_brain.case_ids[2]
    label = load_case(tiny_brain, cid).label
    for _ in range(11):
        project.save_annotation(cid, label, author="ana")
    paths = [project.root / q for q in project.history(cid)["path"]]
    kept = paths[0].read_bytes()
    for q in paths:
        q.unlink()
    with pytest.raises(InputDataError) as info:
        project.export(tmp_path / "out")
    listed = ", ".join(f"{cid} v{v} missing" for v in range(1, 11))
    assert f"({listed}, and 1 more)" in str(info.value)
    paths[0].write_bytes(kept)  # 10 damaged: all listed, nothing "more"
    with pytest.raises(InputDataError) as info:
        project.export(tmp_path / "out")
    assert "(" + ", ".join(f"{cid} v{v} missing" for v in range(2, 12)) + ")" in str(info.value)
    bad = project.verify()
    assert bad["path"].tolist() == [str(q) for q in paths[1:]]
    paths[1].write_bytes(b"changed")
    assert project.verify()["path"].iloc[0] == str(paths[1])  # checksum differs: named too
    assert project.verify()["problem"].iloc[0] == "checksum differs"
    assert project.status(damaged=bad.iloc[:3]).set_index("case_id")["tampered"][cid] == 3  # as given, not rehashed
    assert project.status()["tampered"].dtype.kind == "i"
    assert not (tmp_path / "out").exists()


def test_working_cohort_uses_the_latest_annotation_and_keeps_the_cohort(tmp_path, tiny_brain):
    cohort = _copy_cohort(tiny_brain, tmp_path / "c", classes={"caudate": (1,)})
    p = Project.create(tmp_path / "p", cohort)
    first, second = cohort.case_ids[1], cohort.case_ids[4]
    edited = load_case(cohort, second).label.copy()
    edited[:2] = 0
    p.save_annotation(second, load_case(cohort, second).label, author="ana")
    p.save_annotation(second, edited, author="ana")
    p.save_annotation(first, np.zeros_like(edited), author="ben")
    np.testing.assert_array_equal(p.load_annotation(second), edited)  # this case's latest, not the last case's
    latest = p.latest()
    assert list(latest["case_id"]) == sorted([first, second]) and list(latest.columns) == list(p.history().columns)
    assert latest.set_index("case_id")["version"].to_dict() == {first: 1, second: 2}
    assert list(latest.index) == [0, 1]
    for cohort_labels in (False, True):
        kw = {"cohort_labels": True} if cohort_labels else {}
        w = p.working_cohort(**kw)
        assert (w.kind, w.classes, w.name, w.notes, w.source) == (
            cohort.kind, {"caudate": (1,)}, "renamed", ["a note"], cohort.source)
        np.testing.assert_array_equal(load_case(w, second).label, edited)
        np.testing.assert_array_equal(load_case(w, first).label, 0)
        other = cohort.case_ids[0]
        if cohort_labels:  # a held-out case labelled elsewhere keeps its label
            np.testing.assert_array_equal(load_case(w, other).label, load_case(cohort, other).label)
        else:
            assert load_case(w, other).label is None
            assert list(w.cases.columns) == list(cohort.cases.columns)


@pytest.mark.parametrize("kind", ["fairseg", "fairdomain"])
def test_npz_cohorts_annotate_work_and_export_under_their_label_key(tmp_path, kind):
    from napari_fairseg.data.readers import open_cohort

    folder = tmp_path / "c"
    folder.mkdir()
    m = np.zeros((8, 8), np.int8)
    m[2:6, 2:6] = -1
    m[3:5, 3:5] = -2
    for i in range(3):
        if kind == "fairseg":
            np.savez(folder / f"data_{i}.npz", slo_fundus=np.zeros((8, 8, 3), np.uint8), disc_cup_mask=m, race=i % 2)
        else:  # the OCT modality: its mask is not under the default (SLO) key
            np.savez(folder / f"data_{i}.npz", fundus_slo=np.zeros((8, 8)), slo_disc_cup=np.zeros_like(m),
                     fundus_oct=np.ones((8, 8)), oct_disc_cup=m, race=i % 2)
    cohort = open_cohort(folder, **({"modality": "oct"} if kind == "fairdomain" else {}))
    assert cohort.kind == kind
    p = Project.create(tmp_path / "p", cohort)
    truth = load_case(cohort, "data_1").label
    assert truth.max() == 2
    p.save_annotation("data_1", truth, author="ana")
    np.testing.assert_array_equal(load_case(p.working_cohort(), "data_1").label, truth)
    p.export(tmp_path / "exp")
    np.testing.assert_array_equal(load_case(open_cohort(tmp_path / "exp" / "manifest.csv"), "data_1").label, truth)


# --------------------------------------------------------------------------- saves: names, links, durability
def test_a_save_without_hard_links_or_with_a_failing_writer_leaves_one_file(project, tiny_brain, monkeypatch):
    import napari_fairseg.active.project as project_module

    cid = tiny_brain.case_ids[0]
    label = load_case(tiny_brain, cid).label
    folder = project.root / "annotations" / cid

    def no_links(src, dest):
        raise PermissionError(1, "Operation not permitted")  # FAT/exFAT, some network shares

    with monkeypatch.context() as m:
        m.setattr(os, "link", no_links)
        assert project.save_annotation(cid, label, author="ana") == 1
    assert sorted(q.name for q in folder.iterdir()) == ["v0001.nii.gz"] and project.verify().empty
    np.testing.assert_array_equal(project.load_annotation(cid), label)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(project_module, "save_label", disk_full)  # fails before the temporary file exists
        with pytest.raises(OSError, match="No space left"):
            project.save_annotation(cid, label, author="ana")
    assert sorted(q.name for q in folder.iterdir()) == ["v0001.nii.gz"] and len(project.history(cid)) == 1


def test_a_taken_version_name_is_skipped_not_replaced(project, tiny_brain):
    cid = tiny_brain.case_ids[3]
    label = load_case(tiny_brain, cid).label
    project.save_annotation(cid, label, author="ana")
    stray = project.root / "annotations" / cid / "v0002.nii.gz"  # left by a save killed before its commit
    stray.write_bytes(b"never committed")
    assert project.save_annotation(cid, label, author="ana") == 2
    assert project.history(cid)["path"].tolist() == [f"annotations/{cid}/v0001.nii.gz",
                                                      f"annotations/{cid}/v0002-2.nii.gz"]
    assert stray.read_bytes() == b"never committed" and project.orphans() == [stray]
    np.testing.assert_array_equal(project.load_annotation(cid), label)


def test_a_linked_case_folder_is_refused_even_inside_the_project(project, tiny_brain):
    a, b = tiny_brain.case_ids[:2]
    project.save_annotation(a, load_case(tiny_brain, a).label, author="ana")
    (project.root / "annotations" / b).symlink_to(project.root / "annotations" / a)  # b's versions in a's folder
    with pytest.raises(InputDataError, match="is a link"):
        project.save_annotation(b, load_case(tiny_brain, b).label, author="ana")
    assert project.history(b).empty and len(list((project.root / "annotations" / a).iterdir())) == 1


def test_the_new_name_is_fsynced_before_the_row_commits(project, tiny_brain, monkeypatch):
    import stat

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    seen = {}

    def hook(step):
        seen[step] = list(synced)

    cid = tiny_brain.case_ids[0]
    project.save_annotation(cid, load_case(tiny_brain, cid).label, author="ana", _hook=hook)
    assert True not in seen["written"]  # the file itself is synced before it is named ...
    assert seen["published"].count(True) == 1  # ... and its folder once it holds the new name


def test_import_labels_checks_the_affine_skips_unlabelled_cases_and_names_the_importer(tmp_path, tiny_brain):
    import nibabel as nib

    from napari_fairseg.data.manifest import Cohort

    ids = tiny_brain.case_ids
    cases = tiny_brain.cases.copy()
    cases.loc[cases["case_id"] == ids[0], "label"] = ""
    p = Project.create(tmp_path / "p", tiny_brain)
    done = p.import_labels(Cohort(cases, "nifti", tiny_brain.classes, "src", source=tiny_brain.source))
    assert done == list(ids[1:]) and set(p.history()["author"]) == {"import"}  # the default importer
    assert p.history(ids[0]).empty
    img = nib.load(cases.loc[cases["case_id"] == ids[0], "image"].iloc[0])
    shifted = tmp_path / "shifted.nii.gz"
    aff = img.affine.copy()
    aff[:3, :3] *= 2  # same grid, twice the voxel size: another space
    nib.save(nib.Nifti1Image(load_case(tiny_brain, ids[0]).label.astype(np.uint8), aff), shifted)
    cases.loc[cases["case_id"] == ids[0], "label"] = str(shifted)
    with pytest.raises(InputDataError, match="affine differs"):
        p.import_labels(Cohort(cases, "nifti", tiny_brain.classes, "src", source=tiny_brain.source))
    assert p.history(ids[0]).empty


def test_create_project_imports_only_when_asked(tmp_path, tiny_brain):
    from napari_fairseg.active.project import create_project

    with create_project(tmp_path / "a", tiny_brain.source) as p:
        assert p.history().empty
    with create_project(tmp_path / "b", tiny_brain.source, import_labels=True) as p:
        assert set(p.history()["author"]) == {"import"} and len(p.history()) == len(tiny_brain)
    with create_project(tmp_path / "c", tiny_brain.source, import_labels=True, author="site-b") as p:
        assert set(p.history()["author"]) == {"site-b"}


def test_a_failed_import_into_an_existing_folder_leaves_it_as_it_was(tmp_path, tiny_brain):
    root = tmp_path / "existing"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    cases = tiny_brain.cases.copy()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    cases.loc[cases.index[-1], "label"] = str(broken)  # the last case fails after the others were saved
    from napari_fairseg.data.manifest import Cohort

    with pytest.raises(InputDataError):
        Project.create(root, Cohort(cases, "nifti", tiny_brain.classes, "b", source=tiny_brain.source),
                       import_labels=True)
    assert sorted(q.name for q in root.iterdir()) == ["notes.txt"]


def test_an_annotation_whose_image_was_replaced_is_refused(tmp_path, tiny_brain):
    import nibabel as nib

    cohort = _copy_cohort(tiny_brain, tmp_path / "c")
    p = Project.create(tmp_path / "p", cohort)
    cid = cohort.case_ids[2]
    p.save_annotation(cid, load_case(cohort, cid).label, author="ana")
    path = cohort.cases.set_index("case_id").loc[cid, "image"]
    img = nib.load(path)
    aff = img.affine.copy()
    aff[:3, 3] += 40  # another scan on the same grid
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), path)
    with pytest.raises(InputDataError, match="affine differs"):
        p.load_annotation(cid)
