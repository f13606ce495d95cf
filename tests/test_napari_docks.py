"""Docks and the job worker in a real napari window (Xvfb), driven through their buttons."""

import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_fairseg._napari.cohort_dock import CohortDock
from napari_fairseg._napari.workers import JobRunner
from napari_fairseg.data.arrays import load_case
from napari_fairseg.errors import InputDataError
from napari_fairseg.progress import Progress

SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"


def _shot(viewer, name):
    """Save the whole window (1400×900) for a person to look at: build/screenshots/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    window = viewer.window._qt_window
    window.resize(1400, 900)
    viewer.reset_view()
    assert window.grab().save(str(path))
    return path


def test_cohort_dock_loads_filters_and_opens_a_case(make_napari_viewer, qtbot, tiny_brain, tmp_path):
    viewer = make_napari_viewer()
    dock = CohortDock(viewer)
    viewer.window.add_dock_widget(dock, name="Cohort")
    dock.path_edit.setText(str(tiny_brain.source / "manifest.csv"))
    qtbot.mouseClick(dock.load_button, Qt.MouseButton.LeftButton)
    assert dock.table.rowCount() == len(tiny_brain) and f"{len(tiny_brain)} cases" in dock.info.text()
    dock.attribute_combo.setCurrentText("group")
    dock.value_combo.setCurrentText("Group 1")
    expected = sorted(tiny_brain.cases.loc[tiny_brain.cases["group"] == "Group 1", "case_id"])
    assert sorted(dock.visible_case_ids()) == expected
    first = dock.visible_case_ids()[0]
    row = next(r for r in range(dock.table.rowCount()) if dock.table.item(r, 0).text() == first)
    dock.table.selectRow(row)
    assert dock.open_button.isEnabled()
    qtbot.mouseClick(dock.open_button, Qt.MouseButton.LeftButton)
    names = [la.name for la in viewer.layers]
    assert names == [first, f"{first} ground truth"]
    case = load_case(tiny_brain, first)
    np.testing.assert_array_equal(viewer.layers[1].data, case.label)
    np.testing.assert_allclose(viewer.layers[0].scale, case.spacing)  # physical voxel size
    _shot(viewer, "cohort_dock")
    other = expected[-1]
    dock.open_case(other)  # a second case replaces the first one's layers
    assert [la.name for la in viewer.layers] == [other, f"{other} ground truth"]
    # with a predictions folder, the case's latest prediction opens too
    from napari_fairseg.data.arrays import save_label

    pred = np.zeros_like(case.label)
    pred[5:9, 5:9, 5:9] = 1
    save_label(tiny_brain, tmp_path / "preds" / f"{first}.nii.gz", pred, like=case)
    dock.pred_edit.setText(str(tmp_path / "preds"))
    dock.open_case(first)
    assert [la.name for la in viewer.layers][-1] == f"{first} prediction"
    np.testing.assert_array_equal(viewer.layers[f"{first} prediction"].data, pred)


def test_cohort_dock_reports_a_bad_path(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    dock = CohortDock(viewer)
    shown = []
    monkeypatch.setattr("napari_fairseg._napari.cohort_dock.show_error", shown.append)
    dock.load(tmp_path / "missing.csv")
    assert dock.cohort is None and "missing.csv" in shown[0]


def _project_with_two_labels(tmp_path, cohort):
    """A project on ``cohort`` whose first two training cases are labelled (ground truth)."""
    from napari_fairseg.active import Project

    root = tmp_path / "proj"
    train = cohort.cases.loc[cohort.cases["split"] == "train", "case_id"].tolist()
    with Project.create(root, cohort) as p:
        for cid in train[:2]:
            p.save_annotation(cid, load_case(cohort, cid).label, author="seed", source="imported")
    return root, train


def _counting(n, *, fail=False, delay=0.0):
    for i in range(n):
        time.sleep(delay)
        yield Progress("count", i + 1, n, f"step {i + 1}")
    if fail:
        raise InputDataError("cohort.csv", "column 'group' is missing")
    return n * 10


def test_job_runner_reports_progress_results_errors_and_cancels(make_napari_viewer, qtbot, monkeypatch):
    make_napari_viewer()
    states, results, errors, shown = [], [], [], []
    monkeypatch.setattr("napari_fairseg._napari.workers.show_error", shown.append)
    runner = JobRunner(on_state=states.append)
    runner.start(_counting(3), title="count", on_done=results.append)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_counting(1), title="again", on_done=results.append)
    qtbot.waitUntil(lambda: results == [30], timeout=10_000)
    assert states == [True, False] and not runner.busy and runner.last.done == 3

    runner.start(_counting(2, fail=True), title="audit", on_done=results.append, on_error=errors.append)
    qtbot.waitUntil(lambda: len(errors) == 1, timeout=10_000)
    assert "cohort.csv" in shown[0] and "column 'group' is missing" in shown[0] and results == [30]

    closed = []

    def endless():
        try:
            while True:
                time.sleep(0.01)
                yield Progress("loop", 0, None)
        finally:
            closed.append(True)

    runner.start(endless(), title="endless", on_done=results.append)
    qtbot.wait(100)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert closed == [True] and results == [30] and states[-1] is False


def test_job_runner_inline_mode(make_napari_viewer, monkeypatch):
    make_napari_viewer()
    monkeypatch.setenv("FAIRSEG_INLINE_JOBS", "1")
    results = []
    JobRunner().start(_counting(2), title="inline", on_done=results.append)
    assert results == [20]  # finished before start() returned


def test_inference_dock_runs_on_the_case_and_the_cohort(make_napari_viewer, qtbot, tiny_brain, tmp_path):
    from napari_fairseg._napari.inference_dock import InferenceDock
    from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint
    from napari_fairseg.progress import run_job

    viewer = make_napari_viewer()
    cohort_dock, dock = CohortDock(viewer), InferenceDock(viewer)
    viewer.window.add_dock_widget(cohort_dock, name="Cohort")
    viewer.window.add_dock_widget(dock, name="Model & inference")
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)  # nothing open yet: no crash, no job
    assert not dock.runner.busy
    cohort_dock.load(tiny_brain.source / "manifest.csv")
    case_id = tiny_brain.case_ids[0]
    cohort_dock.open_case(case_id)
    assert dock.model_combo.currentText() == "brain (bundled)"  # picked for a NIfTI cohort
    dock.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    assert not dock.run_case_button.isEnabled() and dock.cancel_button.isEnabled()  # busy while it runs
    qtbot.waitUntil(lambda: f"{case_id} prediction" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: dock.run_case_button.isEnabled(), timeout=10_000)
    ckpt = load_checkpoint(bundled_checkpoint("brain"))
    ref = run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu")),
                                   [case_id], keep=True)).predictions[case_id]
    np.testing.assert_array_equal(viewer.layers[f"{case_id} prediction"].data, ref.label)
    np.testing.assert_allclose(viewer.layers[f"{case_id} entropy"].data, ref.maps["entropy"], atol=1e-6)
    assert viewer.layers[f"{case_id} entropy"].contrast_limits == [0.0, pytest.approx(np.log(2))]
    assert f"masked scaled entropy {ref.scores['masked_entropy']:.4f}" in dock.status.text()
    assert "cpu" in dock.status.text()
    _shot(viewer, "inference_dock")
    dock.uncertainty_combo.setCurrentText("mc")
    dock.passes.setValue(2)
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: f"{case_id} mutual information" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: dock.run_case_button.isEnabled(), timeout=10_000)
    assert sum(la.name == f"{case_id} prediction" for la in viewer.layers) == 1  # replaced, not stacked

    dock.out_dir.setText(str(tmp_path / "preds"))
    qtbot.mouseClick(dock.run_cohort_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: (tmp_path / "preds" / "scores.csv").is_file(), timeout=60_000)
    qtbot.waitUntil(lambda: "Predicted" in dock.status.text(), timeout=10_000)
    assert len(list((tmp_path / "preds").glob("brain_*.nii.gz"))) == len(tiny_brain)


def test_active_learning_dock_suggest_accept_edit_save_next_retrain(make_napari_viewer, qtbot, tiny_brain,
                                                                     tmp_path, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_fairseg._napari.active_dock import ActiveLearningDock
    from napari_fairseg.active import Project

    root, train = _project_with_two_labels(tmp_path, tiny_brain)
    viewer = make_napari_viewer()
    dock = ActiveLearningDock(viewer)
    viewer.window.add_dock_widget(dock, name="Active learning")
    dock.project_edit.setText(str(root))
    qtbot.mouseClick(dock.open_button, Qt.MouseButton.LeftButton)
    dock.strategy_combo.setCurrentText("localized")
    dock.batch.setValue(2)
    dock.epochs.setValue(2)
    dock.author_edit.setText("ana")
    qtbot.mouseClick(dock.suggest_button, Qt.MouseButton.LeftButton)
    assert not dock.suggest_button.isEnabled() and dock.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: dock.table.rowCount() == 2 and dock.suggest_button.isEnabled(), timeout=120_000)
    suggested = [dock.table.item(r, 0).text() for r in range(2)]
    assert set(suggested) == set(train[2:]) and "Round 1 (trained)" in dock.status.text()

    dock.table.selectRow(0)
    qtbot.mouseClick(dock.accept_button, Qt.MouseButton.LeftButton)
    first = suggested[0]
    qtbot.waitUntil(lambda: f"{first} annotation" in viewer.layers, timeout=30_000)
    layer = viewer.layers[f"{first} annotation"]
    assert layer.mode == "paint" and not dock.unsaved()
    edited = layer.data.copy()
    edited[:4, :4, :4] = 1
    layer.data = edited  # a correction, as the brush would make
    assert dock.unsaved()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    qtbot.mouseClick(dock.next_button, Qt.MouseButton.LeftButton)  # unsaved edits: the user keeps them
    assert viewer.layers[f"{first} annotation"] is layer and dock.case_id == first
    qtbot.mouseClick(dock.save_button, Qt.MouseButton.LeftButton)
    assert not dock.unsaved() and dock.table.item(0, 4).text() == "yes"

    qtbot.mouseClick(dock.next_button, Qt.MouseButton.LeftButton)
    second = suggested[1]
    qtbot.waitUntil(lambda: f"{second} annotation" in viewer.layers, timeout=30_000)
    qtbot.waitUntil(lambda: dock.accept_button.isEnabled(), timeout=10_000)
    assert f"{first} annotation" not in viewer.layers
    qtbot.mouseClick(dock.save_button, Qt.MouseButton.LeftButton)  # accepted as the model drew it

    qtbot.mouseClick(dock.retrain_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Round 2 (trained)" in dock.status.text(), timeout=120_000)
    lines = dock.figure.axes[0].get_lines()
    assert [list(ln.get_xdata()) for ln in lines] == [[1, 2]] * 3  # Dice, Δ, ESSP per round
    _shot(viewer, "active_learning_dock")
    dock.close()

    with Project.open(root) as again:  # save → reopen → version history
        h = again.history().set_index("case_id")
        assert h.loc[first, "author"] == "ana" and h.loc[first, "source"] == "human"
        assert h.loc[second, "source"] == "model"
        np.testing.assert_array_equal(again.load_annotation(first), edited)
        assert len(again.rounds()) == 2


def test_audit_dock_tables_heatmap_drilldown_and_export(make_napari_viewer, qtbot, tiny_brain, tmp_path):
    from matplotlib.backend_bases import MouseEvent

    from napari_fairseg._napari.audit_dock import AuditDock
    from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint
    from napari_fairseg.progress import run_job
    from napari_fairseg.report.audit import AuditConfig, audit_job

    preds = tmp_path / "preds"
    ckpt = load_checkpoint(bundled_checkpoint("brain"))
    run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu")),
                             out_dir=preds, write_maps=False))
    viewer = make_napari_viewer()
    dock = AuditDock(viewer)
    viewer.window.add_dock_widget(dock, name="Fairness audit")
    assert dock.set_cohort(tiny_brain.source / "manifest.csv")
    dock.pred_edit.setText(str(preds))
    dock.attr_a.setCurrentText("group")
    dock.attr_b.setCurrentText("sex")
    dock.split_combo.setCurrentText("(all)")
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.audit is not None, timeout=60_000)
    ref = run_job(audit_job(tiny_brain, preds, AuditConfig(attributes=("group", "sex"), min_group_size=5, n_boot=500)))
    e = ref.summary["attributes"]["group"]["metrics"]["dice_caudate"]
    assert dock.metric_combo.currentText() == "dice_caudate"
    assert f"Δ {e['delta']:.4f}" in dock.summary.text() and f"ES (ESSP) {e['es']:.4f}" in dock.summary.text()
    g = ref.groups[(ref.groups["attribute"] == "group") & (ref.groups["metric"] == "dice_caudate")]
    shown = {dock.groups_table.item(r, 0).text(): dock.groups_table.item(r, 2).text() for r in range(len(g))}
    assert shown == {row.group: f"{row.mean:.4f}" for row in g.itertuples()}

    # click the Group 1 × F cell of the heatmap: its cases are listed, and one opens with its prediction
    ax = dock.figure.axes[0]
    row = list(ax.get_yticklabels()).index(next(t for t in ax.get_yticklabels() if t.get_text() == "Group 1"))
    col = list(ax.get_xticklabels()).index(next(t for t in ax.get_xticklabels() if t.get_text() == "F"))
    x, y = ax.transData.transform((col, row))
    MouseEvent("button_press_event", dock.canvas, x, y, button=1)._process()
    c = tiny_brain.cases
    expected = sorted(c.loc[(c["group"] == "Group 1") & (c["sex"] == "F"), "case_id"])
    listed = sorted(dock.cases_list.item(i).text() for i in range(dock.cases_list.count()))
    assert listed == expected and listed
    dock.open_case(listed[0])
    assert [la.name for la in viewer.layers][-1] == f"{listed[0]} prediction"
    _shot(viewer, "audit_dock")
    report = dock.export(tmp_path / "report")
    assert report.is_file() and (tmp_path / "report" / "groups.csv").is_file()


def test_inference_dock_trains_a_model_and_selects_it(make_napari_viewer, qtbot, tiny_brain, tmp_path):
    import shutil

    from napari_fairseg._napari.inference_dock import FILE, InferenceDock
    from napari_fairseg.data.readers import open_cohort
    from napari_fairseg.models.checkpoint import load_checkpoint

    shutil.copytree(tiny_brain.source, tmp_path / "cohort")  # training writes models/ beside the cohort
    cohort = open_cohort(tmp_path / "cohort" / "manifest.csv")
    viewer = make_napari_viewer()
    dock = InferenceDock(viewer)
    cohort_dock = CohortDock(viewer)
    cohort_dock.load(cohort.source)
    cohort_dock.open_case(cohort.case_ids[0])
    dock.device_combo.setCurrentText("cpu")
    dock.train_epochs.setValue(2)
    qtbot.mouseClick(dock.train_button, Qt.MouseButton.LeftButton)
    assert not dock.train_button.isEnabled()
    qtbot.waitUntil(lambda: dock.model_combo.currentText() == FILE, timeout=120_000)
    ckpt = load_checkpoint(dock.model_path.text())
    assert ckpt.meta["epoch"] == 2 and Path(dock.model_path.text()).parent == tmp_path / "cohort" / "models"
    assert dock.train_button.isEnabled() and "validation Dice" in dock.status.text()


def test_cancel_button_stops_a_retrain_and_records_nothing(make_napari_viewer, qtbot, tiny_brain, tmp_path):
    from napari_fairseg._napari.active_dock import ActiveLearningDock
    from napari_fairseg.active import Project

    root, train = _project_with_two_labels(tmp_path, tiny_brain)
    viewer = make_napari_viewer()
    dock = ActiveLearningDock(viewer)
    dock.open_project(root)
    dock.epochs.setValue(500)  # minutes of training: only Cancel ends it in time
    qtbot.mouseClick(dock.retrain_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.runner.last is not None and dock.runner.last.stage == "epoch", timeout=60_000)
    qtbot.mouseClick(dock.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=30_000)
    assert dock.retrain_button.isEnabled() and not dock.cancel_button.isEnabled()
    with Project.open(root) as again:
        assert again.rounds().empty and again.status()["labelled"].sum() == 2

    # removing the dock (its × button) stops its job too
    widget = viewer.window.add_dock_widget(dock, name="Active learning")
    qtbot.mouseClick(dock.retrain_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.runner.busy and dock.runner.last.stage == "epoch", timeout=60_000)
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=30_000)
