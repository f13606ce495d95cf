"""The labelling project: versions, checksums, atomic saves, a killed writer, reopening."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

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
