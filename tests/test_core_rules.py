"""Project rules: a headless core, atomic writes, cancellable jobs."""

import subprocess
import sys

import pytest

from napari_fairseg.data.atomic import write_text_atomic
from napari_fairseg.errors import Cancelled
from napari_fairseg.progress import Progress, run_job

CORE = ["napari_fairseg", "napari_fairseg.data", "napari_fairseg.data.synthetic", "napari_fairseg.metrics",
        "napari_fairseg.report", "napari_fairseg.baseline", "napari_fairseg.cli", "napari_fairseg.models",
        "napari_fairseg.inference", "napari_fairseg.training", "napari_fairseg.active"]

BLOCKER = """
import sys, importlib.abc
BANNED = ("napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BANNED:
            raise ImportError(f"GUI import attempted: {name}")
sys.meta_path.insert(0, Block())
"""


def test_core_imports_without_any_gui_package():
    code = BLOCKER + "\n".join(f"import {m}" for m in CORE) + (
        "\nimport napari_fairseg.metrics.subgroups as s, divexplorer"
        "\nassert not any(k.split('.')[0] in BANNED for k in sys.modules), 'GUI module loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_blocker_really_blocks():
    # the check above cannot pass vacuously: the same blocker stops a GUI import
    r = subprocess.run([sys.executable, "-c", BLOCKER + "import qtpy"], capture_output=True, text=True)
    assert r.returncode != 0 and "GUI import attempted: qtpy" in r.stderr


def test_importing_the_package_loads_neither_torch_nor_qt():
    code = "import sys, napari_fairseg; assert 'torch' not in sys.modules and 'qtpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from napari_fairseg.data.atomic import atomic_path

    p = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_run_job_returns_reports_and_cancels():
    closed = []

    def job():
        try:
            for i in range(5):
                yield Progress("work", i + 1, 5)
            return "done"
        finally:
            closed.append(True)

    seen = []
    assert run_job(job(), on_progress=seen.append) == "done" and len(seen) == 5
    with pytest.raises(Cancelled, match="work"):
        run_job(job(), should_cancel=lambda: True)
    assert closed == [True, True]


def test_atomic_writes_get_normal_file_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        new = write_text_atomic(tmp_path / "new.txt", "a")
        assert stat.S_IMODE(new.stat().st_mode) == 0o644  # not mkstemp's private 0600
        os.chmod(new, 0o640)
        write_text_atomic(new, "b")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640  # an existing file keeps its mode
    finally:
        os.umask(old)


def test_progress_bar_into_a_file_writes_a_readable_log():
    import io

    from napari_fairseg.cli.common import ProgressBar
    from napari_fairseg.progress import Progress

    log = io.StringIO()
    bar = ProgressBar(log, every=3600)
    for epoch in range(50):  # a nested job: the stages alternate on every event
        bar(Progress("train", 1, 1, f"epoch {epoch}"))
        bar(Progress("epoch", epoch + 1, 50))
    bar(Progress("evaluate", 1, 2))
    lines = log.getvalue().splitlines()
    assert [ln.split()[0] for ln in lines] == ["train", "epoch", "evaluate"]  # once per stage and interval
    bar.last["simulate"] = bar.last["train"] - 7200  # a rare outer stage last printed long ago
    bar(Progress("train", 1, 1))
    bar(Progress("simulate", 2, 12, "wle seed 0"))
    assert log.getvalue().splitlines()[-1].startswith("simulate")  # not drowned by the inner stages
    bar.every = 0
    bar(Progress("epoch", 50, 50, "done"))
    assert log.getvalue().splitlines()[-1].startswith("epoch") and "50/50" in log.getvalue().splitlines()[-1]
