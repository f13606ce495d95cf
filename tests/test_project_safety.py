"""The labelling project under attack and under accident: encoder files that carry code,
concurrent writers, saves killed at each step, tampered old versions, a corrupt database,
an export aimed at the cohort's own folder, and projects on dataset folders."""

import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_fairseg.active import Project, RoundConfig, embeddings_job, round_job
from napari_fairseg.active.project import create_project, sha256_file
from napari_fairseg.cli import main
from napari_fairseg.data.arrays import load_case
from napari_fairseg.data.manifest import write_manifest
from napari_fairseg.data.readers import open_cohort
from napari_fairseg.errors import InputDataError
from napari_fairseg.models import build_network
from napari_fairseg.models.checkpoint import save_checkpoint
from napari_fairseg.progress import run_job
from napari_fairseg.training import model_config_for

from .conftest import write_toy_cohort

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def cohort(tmp_path):
    """A fresh small 2D cohort with a manifest in its own folder (tests may try to overwrite it)."""
    out = tmp_path / "cohort"
    toy = write_toy_cohort(out, n_major=4, n_minor=2, val=(2, 2), seed=7)
    toy.cases["split"] = toy.cases["split"].replace({"val": "test"})
    write_manifest(toy, out / "manifest.csv")
    return open_cohort(out / "manifest.csv")


def _label(cohort, cid, flip=None):
    lab = load_case(cohort, cid).label.copy()
    if flip is not None:
        lab.flat[flip] = 1 - lab.flat[flip]
    return lab


def _digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. encoder files that carry code
def _evil_pt2(path, marker):
    """A valid ``torch.export`` archive whose sample inputs unpickle to ``open(marker, "w")``."""

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    plain = path.with_name("plain.pt2")
    torch.export.save(torch.export.export(Mean(), (torch.zeros(1, 1, 32, 32),)), str(plain))

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    torch.save(Payload(), buf)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = buf.getvalue() if "sample_inputs/" in info.filename else src.read(info.filename)
            dst.writestr(info.filename, data)
    return path


def _evil_torchscript(path, marker):
    """A TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) creates ``marker``."""

    class Evil(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.where = str(marker)
            self.buf = torch.zeros(1)

        def forward(self, x):
            return x.mean(dim=(2, 3)) + self.buf.sum()

        @torch.jit.export
        def __getstate__(self) -> list[str]:
            return [self.where]

        @torch.jit.export
        def __setstate__(self, state: list[str]) -> None:
            self.where = state[0]
            self.training = False
            self.buf = torch.from_file(state[0], shared=True, size=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Evil()), str(path))
    assert not marker.exists()  # saving ran nothing; loading would
    return path


def _evil_pickle(path, marker):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "napari-fairseg-checkpoint", "config": Payload()}, path)
    return path


@pytest.mark.parametrize(("make", "name", "why"), [
    (_evil_pt2, "evil.pt2", "refused: TorchScript/ExportedProgram files can run code"),
    (_evil_torchscript, "evil.pt", "refused: TorchScript/ExportedProgram files can run code"),
    (_evil_pt2, "renamed.pt", "refused: TorchScript/ExportedProgram files can run code"),
    (_evil_pickle, "pickled.pt", "refused to load: the file holds Python objects"),
])
def test_a_booby_trapped_encoder_file_is_refused_and_runs_nothing(tmp_path, cohort, make, name, why):
    marker = tmp_path / "pwned"
    evil = make(tmp_path / name, marker)
    config = model_config_for(cohort, network="unet", features=(8, 16, 32))
    with pytest.raises(InputDataError, match=why) as info:
        run_job(embeddings_job(cohort, cohort.case_ids[:2], model=build_network(config), config=config,
                               encoder=evil))
    assert str(evil) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(("make", "name"), [(_evil_pt2, "evil.pt2"), (_evil_torchscript, "evil.pt")])
def test_suggest_refuses_an_encoder_that_carries_code(tmp_path, cohort, capsys, make, name):
    marker = tmp_path / "pwned"
    evil = make(tmp_path / name, marker)
    proj = tmp_path / "p"
    with Project.create(proj, cohort) as p:
        for cid in cohort.cases.loc[cohort.cases["split"] == "train", "case_id"][:4]:
            p.save_annotation(cid, _label(cohort, cid), author="ana")
    code = main(["--quiet", "suggest", str(proj), "--strategy", "fair-attr", "--encoder", str(evil), "--batch", "2",
                 "--first-epochs", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and str(evil) in err
    assert "can run code when loaded; give a FairSeg checkpoint (.pt) instead" in err
    assert not marker.exists()
    with Project.open(proj) as p:
        assert p.rounds().empty


def test_a_fairseg_checkpoint_encodes_with_its_networks_bottleneck(tmp_path, cohort):
    config = model_config_for(cohort, network="unet", features=(8, 16, 32))
    torch.manual_seed(1)
    net = build_network(config)
    path = save_checkpoint(tmp_path / "encoder.pt", net, config, {"classes": cohort.classes})
    ids = cohort.case_ids[:3]
    direct = run_job(embeddings_job(cohort, ids, model=net, config=config))  # --encoder encoder
    other = model_config_for(cohort, network="unet", features=(4, 8))
    from_file = run_job(embeddings_job(cohort, ids, model=build_network(other), config=other, encoder=path))
    for cid in ids:
        assert direct[cid].shape == (32,)
        np.testing.assert_allclose(from_file[cid], direct[cid], rtol=1e-5, atol=1e-6)
    plain = tmp_path / "weights.pt"
    torch.save(net.state_dict(), plain)  # weights alone: no named network to build
    with pytest.raises(InputDataError, match="not a napari-fairseg checkpoint"):
        run_job(embeddings_job(cohort, ids, model=net, config=config, encoder=plain))


# --------------------------------------------------------------------------- 2. concurrent and interrupted saves
HOOKED_WRITER = r"""
import os, sys, time
from pathlib import Path
import numpy as np
from napari_fairseg.active.project import Project
from napari_fairseg.data.arrays import load_case

root, cid, role, sync = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])

def wait_for(name):
    t0 = time.time()
    while not (sync / name).exists():
        if time.time() - t0 > 60:
            sys.exit(f"{role}: timed out waiting for {name}")
        time.sleep(0.02)

def hook(step):
    if role == "A" and step == "published":   # A holds its reservation: let B try to save now
        (sync / "a_inside").touch()
        wait_for("b_written")
        time.sleep(0.5)                        # B is now waiting for the write lock
    elif role == "B" and step == "written":
        (sync / "b_written").touch()

p = Project.open(root)
label = load_case(p.cohort, cid).label.copy()
if role == "B":
    wait_for("a_inside")
    label.flat[0] = 1 - label.flat[0]
print(p.save_annotation(cid, label, author=role, _hook=hook), flush=True)
"""


def _writer(root, cid, role, sync):
    return subprocess.Popen([sys.executable, "-c", HOOKED_WRITER, str(root), cid, role, str(sync)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_saving_one_case_get_two_intact_versions(tmp_path, cohort):
    cid = cohort.case_ids[0]
    root = tmp_path / "p"
    Project.create(root, cohort).close()
    sync = tmp_path / "sync"
    sync.mkdir()
    a = _writer(root, cid, "A", sync)
    b = _writer(root, cid, "B", sync)
    out_a, err_a = a.communicate(timeout=120)
    out_b, err_b = b.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert (int(out_a), int(out_b)) == (1, 2)  # B waited for A's reservation to commit
    with Project.open(root) as p:
        h = p.history(cid)
        assert list(h["version"]) == [1, 2] and list(h["author"]) == ["A", "B"]
        assert h["path"].is_unique and p.verify().empty and p.orphans() == []
        np.testing.assert_array_equal(p.load_annotation(cid, 1), _label(cohort, cid))
        np.testing.assert_array_equal(p.load_annotation(cid, 2), _label(cohort, cid, flip=0))


def _killed_save(root, cid, step):
    """Save ``cid`` in a forked child that dies (``os._exit(9)``: no cleanup, no rollback, as
    under SIGKILL) at ``step``; returns its exit code. A fork, not a fresh interpreter: the
    child needs only SQLite and the file writers, not the seconds of imports."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            def die(at):
                if at == step:
                    os._exit(9)

            with Project.open(root) as p:
                p.save_annotation(cid, _label(p.cohort, cid), author="killed", _hook=die)
        finally:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.parametrize("step", ["written", "published", "recorded"])
def test_a_save_killed_at_each_step_leaves_the_project_intact(tmp_path, cohort, step):
    cid = cohort.case_ids[1]
    root = tmp_path / "p"
    with Project.create(root, cohort) as p:
        p.save_annotation(cid, _label(cohort, cid), author="ana")
    assert _killed_save(root, cid, step) == 9
    db = sqlite3.connect(root / "project.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Project.open(root) as p:
        assert list(p.history(cid)["version"]) == [1] and p.verify().empty  # the killed save recorded nothing
        orphans = {o: o.read_bytes() for o in p.orphans()}
        assert orphans  # what the killed save left behind ...
        temporary = [o for o in orphans if o.name.startswith(".v-") and ".part" in o.name]
        named = sorted(set(orphans) - set(temporary))
        assert len(temporary) == 1  # the complete file under its temporary name ...
        if step == "written":  # ... and no version's name was ever written to
            assert named == []
        else:  # ... and linked under the next version's name, whose row never committed
            assert [o.name for o in named] == ["v0002.png"] and orphans[named[0]] == orphans[temporary[0]]
            np.testing.assert_array_equal(np.asarray(Image.open(named[0])), _label(cohort, cid).astype(np.uint8))
        assert p.status().set_index("case_id").loc[cid, "version"] == 1  # ... is ignored
        np.testing.assert_array_equal(load_case(p.working_cohort(), cid).label, _label(cohort, cid))
        assert p.save_annotation(cid, _label(cohort, cid, flip=3), author="ana") == 2
        assert p.verify().empty
        np.testing.assert_array_equal(p.load_annotation(cid), _label(cohort, cid, flip=3))
        for orphan, data in orphans.items():  # never overwritten, never adopted
            assert orphan.read_bytes() == data and orphan in p.orphans()


def test_the_database_is_wal_with_full_sync_on_every_connection(tmp_path, cohort):
    """WAL (readers never block the writer; a crash mid-commit leaves the last commit intact)
    and ``synchronous=FULL``: a save that returned is on disk even after a power cut (in WAL
    mode ``NORMAL`` may lose the last commits, ``OFF`` may corrupt the database)."""
    root = tmp_path / "p"
    with Project.create(root, cohort) as p:
        assert p.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert p.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        p.save_annotation(cohort.case_ids[0], _label(cohort, cohort.case_ids[0]), author="ana")
    with Project.open(root) as again:  # synchronous is per connection: every open sets it again
        assert again.db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain = sqlite3.connect(root / "project.sqlite")  # WAL is a property of the file itself
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain.close()


@pytest.mark.parametrize("step", ["written", "published", "recorded"])
def test_a_save_failing_at_each_step_records_nothing_and_leaves_no_file(tmp_path, cohort, step):
    cid = cohort.case_ids[1]
    p = Project.create(tmp_path / "p", cohort)
    p.save_annotation(cid, _label(cohort, cid), author="ana")

    def fail(at):
        if at == step:
            raise OSError(f"disk full at {at}")

    with pytest.raises(OSError, match=f"disk full at {step}"):
        p.save_annotation(cid, _label(cohort, cid, flip=0), author="ana", _hook=fail)
    assert list(p.history(cid)["version"]) == [1] and p.verify().empty and p.orphans() == []
    assert p.save_annotation(cid, _label(cohort, cid, flip=0), author="ana") == 2


def test_concurrent_rounds_get_their_own_ids_and_model_files(tmp_path, cohort):
    root = tmp_path / "p"
    with Project.create(root, cohort) as p:
        for cid in cohort.cases.loc[cohort.cases["split"] == "train", "case_id"]:
            p.save_annotation(cid, _label(cohort, cid), author="ana")
    stale = root / "models" / "round_0001.pt"  # left by a killed process: not ours to replace
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    cfg = RoundConfig(strategy="random", batch=1, first_epochs=2, epochs=1, device="cpu", amp=False)
    pa, pb = Project.open(root), Project.open(root)  # two connections, as two processes would hold
    job_a = round_job(pa, cfg, train=True)
    while next(job_a).stage != "epoch":  # A has reserved its round and started training
        pass
    rb = run_job(round_job(pb, cfg, train=True))  # B runs a whole round meanwhile
    ra = run_job(job_a)
    assert (ra.round_id, rb.round_id) == (1, 2)
    assert ra.checkpoint == root / "models" / "round_0001-2.pt" and rb.checkpoint == root / "models" / "round_0002.pt"
    assert stale.read_bytes() == b"stale"
    rounds = pa.rounds()
    assert list(rounds["id"]) == [1, 2]
    assert [root / c for c in rounds["checkpoint"]] == [ra.checkpoint, rb.checkpoint]
    assert ra.checkpoint.stat().st_size > 1000 and rb.checkpoint.stat().st_size > 1000
    pa.close()
    pb.close()


# --------------------------------------------------------------------------- 3. tampering with an older version
def test_a_tampered_older_version_fails_status_and_export(tmp_path, cohort, capsys):
    cid, other = cohort.case_ids[:2]
    proj = tmp_path / "p"
    with Project.create(proj, cohort) as p:
        p.save_annotation(cid, _label(cohort, cid), author="ana")
        p.save_annotation(cid, _label(cohort, cid, flip=0), author="ben")
        p.save_annotation(other, _label(cohort, other), author="ana")
        old = p.root / p.history(cid)["path"].iloc[0]
        gone = p.root / p.history(other)["path"].iloc[0]
    old.write_bytes(old.read_bytes() + b"x")  # the latest version stays intact
    gone.unlink()
    with Project.open(proj) as p:
        bad = p.verify()
        assert sorted(zip(bad["case_id"], bad["version"], bad["problem"], strict=True)) == sorted(
            [(cid, 1, "checksum differs"), (other, 1, "missing")])
        assert p.status().set_index("case_id")["tampered"].to_dict() == {
            c: (1 if c in (cid, other) else 0) for c in cohort.case_ids}
    capsys.readouterr()
    assert main(["--quiet", "project", "status", str(proj)]) == 1
    out = capsys.readouterr()
    assert f"TAMPERED {cid} version 1: checksum differs" in out.out
    assert f"TAMPERED {other} version 1: missing" in out.out and "differ from their recorded checksum" in out.err
    exp = tmp_path / "exp"
    assert main(["--quiet", "project", "export", str(proj), "--out", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "refusing to export" in err and f"{cid} v1 checksum differs" in err
    assert not exp.exists()


# --------------------------------------------------------------------------- 4. a corrupt database
@pytest.mark.parametrize("content", [b"this is not sqlite" * 100, b""])
def test_a_corrupt_project_database_is_named_not_a_raw_sqlite_error(tmp_path, cohort, capsys, content):
    proj = tmp_path / "p"
    Project.create(proj, cohort).close()
    db = proj / "project.sqlite"
    for side in ("-wal", "-shm"):
        Path(str(db) + side).unlink(missing_ok=True)
    db.write_bytes(content)
    with pytest.raises(InputDataError, match=r"not a FairSeg project database \(file is corrupt or not SQLite\)"):
        Project.open(proj)
    assert main(["--quiet", "project", "status", str(proj)]) == 2
    err = capsys.readouterr().err
    assert str(db) in err and "not a FairSeg project database" in err


# --------------------------------------------------------------------------- 5. export onto the inputs
def test_export_refuses_the_cohorts_folder_and_any_folder_holding_inputs(tmp_path, cohort, capsys):
    proj = tmp_path / "p"
    with Project.create(proj, cohort) as p:
        p.save_annotation(cohort.case_ids[0], _label(cohort, cohort.case_ids[0]), author="ana")
    folder = Path(cohort.source).parent
    before, project_before = _digests(folder), _digests(proj / "annotations")
    for out, why in ((folder, "cohort's own folder"), (tmp_path, "would overwrite the inputs"),
                     (proj, "would overwrite the inputs")):
        assert main(["--quiet", "project", "export", str(proj), "--out", str(out)]) == 2
        assert why in capsys.readouterr().err
    assert _digests(folder) == before and _digests(proj / "annotations") == project_before  # nothing written or replaced
    assert not (folder / "labels").exists() and not (tmp_path / "labels").exists()
    assert main(["--quiet", "project", "export", str(proj), "--out", str(folder / "export")]) == 0  # a new folder


# --------------------------------------------------------------------------- 6. projects on dataset folders
def test_project_init_on_the_bundled_fairseg_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    proj = tmp_path / "p"
    assert main(["--quiet", "project", "init", str(proj), "--cohort", "sample_data/fundus"]) == 0
    assert "60 cases" in capsys.readouterr().out
    mask = "sample_data/fundus/data_00000.npz"  # the npz label key is added by the reader's rules
    assert main(["--quiet", "label", str(proj), "data_00000", "--mask", mask, "--author", "ana"]) == 0
    monkeypatch.chdir(tmp_path)  # the cohort path is recorded absolute: reopening works from anywhere
    assert main(["--quiet", "project", "status", str(proj)]) == 0
    with Project.open(proj) as p:
        assert p.cohort.kind == "fairseg" and len(p.cohort) == 60
        assert Path(p.cohort.source) == REPO / "sample_data" / "fundus"
        truth = load_case(open_cohort(REPO / "sample_data" / "fundus"), "data_00000").label
        np.testing.assert_array_equal(p.load_annotation("data_00000"), truth)


def test_create_project_takes_a_folder_and_records_its_metadata(tmp_path, cohort):
    folder = Path(cohort.source).parent
    meta = tmp_path / "meta.csv"
    meta.write_text("case_id,scanner\n" + "".join(f"{c},s{i % 2}\n" for i, c in enumerate(cohort.case_ids)))
    with create_project(tmp_path / "p", folder, metadata=meta, import_labels=True) as p:
        assert len(p.history()) == sum(1 for r in cohort.cases["label"] if r)
        assert "scanner" in p.status().columns
    with Project.open(tmp_path / "p") as again:  # the metadata table comes back with the cohort
        assert "scanner" in again.cohort.attributes and again.verify().empty
        assert sha256_file(again.root / again.history()["path"].iloc[0]) == again.history()["sha256"].iloc[0]


def _png_folder(out, n=4):
    from PIL import Image

    out.mkdir(parents=True)
    yy, xx = np.mgrid[:32, :40]
    for i in range(n):
        d2 = (yy - 16) ** 2 + (xx - 18 - i) ** 2
        Image.fromarray(np.full((32, 40, 3), 90 + 20 * i, np.uint8)).save(out / f"eye{i}.png")
        Image.fromarray(np.where(d2 <= 16, 2, np.where(d2 <= 64, 1, 0)).astype(np.uint8)).save(out / f"eye{i}_mask.png")
    return out


def test_cli_declares_classes_and_a_failed_init_leaves_no_project(tmp_path, capsys):
    folder = _png_folder(tmp_path / "eyes")
    proj = tmp_path / "p"
    assert main(["--quiet", "project", "init", str(proj), "--cohort", str(folder), "--import-labels"]) == 2
    assert "not among the declared classes" in capsys.readouterr().err
    assert not proj.exists()  # all or nothing: no half-made project to reopen
    assert main(["--quiet", "project", "init", str(proj), "--cohort", str(folder), "--import-labels",
                 "--classes", "rim=1, cup=2"]) == 0
    with Project.open(proj) as p:
        assert p.cohort.classes == {"rim": (1,), "cup": (2,)} and p.status()["labelled"].all()
    out = tmp_path / "preds"
    assert main(["--quiet", "predict", str(folder), "--model", "fundus", "--device", "cpu", "--out", str(out),
                 "--classes", "cup=2; rim=1; disc=1,2"]) == 0
    assert len(list(out.glob("eye*.png"))) == 4
