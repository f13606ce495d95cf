"""The Active learning dock in a real napari window, opened from Plugins › FairSeg."""

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMessageBox

from napari_fairseg.active import Project


def test_active_learning_dock_suggest_accept_edit_save_next_retrain(make_napari_viewer, qtbot, open_dock, shot,
                                                                     tiny_brain, labelled_project, monkeypatch):
    root, train = labelled_project(tiny_brain)
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Active learning")
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
    shot(viewer, "active_learning_dock")
    dock.close()

    with Project.open(root) as again:  # save → reopen → version history
        h = again.history().set_index("case_id")
        assert h.loc[first, "author"] == "ana" and h.loc[first, "source"] == "human"
        assert h.loc[second, "source"] == "model"
        np.testing.assert_array_equal(again.load_annotation(first), edited)
        assert len(again.rounds()) == 2


def test_new_project_on_the_open_cases_cohort(make_napari_viewer, qtbot, open_dock, tiny_brain, tmp_path):
    viewer = make_napari_viewer()
    cohort_dock, dock = open_dock(viewer, "Cohort"), open_dock(viewer, "Active learning")
    cohort_dock.load(tiny_brain.source / "manifest.csv")
    cohort_dock.open_case(tiny_brain.case_ids[0])
    dock.new_folder_edit.setText(str(tmp_path / "labelling"))
    dock.import_check.setChecked(True)
    qtbot.mouseClick(dock.create_button, Qt.MouseButton.LeftButton)
    assert dock.project is not None and dock.project_edit.text() == str(tmp_path / "labelling")
    pool = tiny_brain.cases[tiny_brain.cases["split"] == "train"]
    assert f"{len(pool)} of {len(pool)} pool cases labelled" in dock.status.text()  # labels imported
    with Project.open(tmp_path / "labelling") as p:
        assert set(p.history()["source"]) == {"imported"} and len(p.history()) == len(tiny_brain)


def test_suggest_without_held_out_labels_says_why_there_is_no_dice(make_napari_viewer, qtbot, open_dock, tiny_brain,
                                                                   tmp_path):
    import pandas as pd

    from napari_fairseg.data.manifest import Cohort, write_manifest

    cases = tiny_brain.cases.copy()
    cases.loc[cases["split"] != "train", "label"] = pd.NA  # the test split has no ground truth
    manifest = write_manifest(Cohort(cases, tiny_brain.kind, tiny_brain.classes, "nolabels"),
                              tmp_path / "nolabels.csv")
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Active learning")
    dock.new_cohort_edit.setText(str(manifest))
    dock.new_folder_edit.setText(str(tmp_path / "p"))
    dock.import_check.setChecked(True)
    qtbot.mouseClick(dock.create_button, Qt.MouseButton.LeftButton)
    dock.epochs.setValue(1)
    dock.batch.setValue(1)
    dock.start_model.setText("brain")
    dock.strategy_combo.setCurrentText("random")
    qtbot.mouseClick(dock.suggest_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "Round 1 (" in dock.status.text(), timeout=120_000)
    assert "nan" not in dock.status.text() and "no held-out case" in dock.status.text()
    assert "nothing to plot" in dock.figure.axes[0].texts[0].get_text()


def test_cancel_button_stops_a_retrain_and_records_nothing(make_napari_viewer, qtbot, open_dock, tiny_brain,
                                                           labelled_project):
    root, train = labelled_project(tiny_brain)
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Active learning")
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
    qtbot.mouseClick(dock.retrain_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.runner.busy and dock.runner.last.stage == "epoch", timeout=60_000)
    viewer.window.remove_dock_widget(viewer.window.dock_widgets["Active learning (napari-fairseg)"].parent())
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=30_000)


def test_folder_button_opens_a_project_picked_in_the_dialog(make_napari_viewer, qtbot, open_dock, tiny_brain,
                                                            labelled_project, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    root, _ = labelled_project(tiny_brain)
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Active learning")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(root))
    qtbot.mouseClick(dock.project_browse, Qt.MouseButton.LeftButton)
    assert dock.project is not None and dock.project_edit.text() == str(root)
    assert "2 of" in dock.status.text()  # two pool cases labelled
