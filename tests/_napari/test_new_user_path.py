"""A new user's whole path in the GUI alone, on files they made themselves.

Their own folder of RGB PNG photos with 0/1/2 masks and a metadata table (no manifest) →
Cohort dock: Folder…, declare the classes, open a case → Model & inference: train a model,
run it on the case and on the cohort → Active learning: New project, Suggest, Accept, edit,
Save → Fairness audit: run, export. Every dock comes from Plugins › FairSeg; every step is a
button click.
"""

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_fairseg.active import Project


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_a_new_user_goes_from_their_own_png_folder_to_an_audit(make_napari_viewer, qtbot, open_dock, shot,
                                                               png_cohort, tmp_path, monkeypatch):
    errors = []
    for where in ("workers", "cohort_dock", "inference_dock", "active_dock", "audit_dock"):
        monkeypatch.setattr(f"napari_fairseg._napari.{where}.show_error", errors.append)
    viewer = make_napari_viewer()
    cohort, model, active, audit = (open_dock(viewer, n) for n in
                                    ("Cohort", "Model & inference", "Active learning", "Fairness audit"))

    # 1. their folder, their classes
    cohort.classes_edit.setText("rim=1, cup=2")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(png_cohort))
    click(qtbot, cohort.folder_button)
    assert cohort.table.rowCount() == 8 and not errors
    cohort.table.selectRow(0)
    click(qtbot, cohort.open_button)
    first = cohort.table.item(0, 0).text()
    assert f"{first} ground truth" in viewer.layers

    # 2. a model of their own, run on the case and the cohort
    model.device_combo.setCurrentText("cpu")
    model.train_epochs.setValue(2)
    click(qtbot, model.train_button)
    qtbot.waitUntil(lambda: model.model_path.text() != "" and model.train_button.isEnabled(), timeout=120_000)
    click(qtbot, model.run_case_button)
    qtbot.waitUntil(lambda: f"{first} prediction" in viewer.layers and model.run_case_button.isEnabled(),
                    timeout=60_000)
    click(qtbot, model.run_cohort_button)
    qtbot.waitUntil(lambda: "Predicted 8 cases" in model.status.text(), timeout=120_000)
    assert (png_cohort / "predictions" / "scores.csv").is_file() and not errors

    # 3. a labelling project, a suggestion, a saved correction
    click(qtbot, active.create_button)
    assert active.project is not None and not errors, errors
    active.start_model.setText(model.model_path.text())  # nothing labelled yet: start from their model
    active.strategy_combo.setCurrentText("entropy")
    active.batch.setValue(2)
    active.epochs.setValue(1)
    click(qtbot, active.suggest_button)
    qtbot.waitUntil(lambda: active.table.rowCount() == 2 and active.suggest_button.isEnabled(), timeout=120_000)
    active.table.selectRow(0)
    click(qtbot, active.accept_button)
    case = active.table.item(0, 0).text()
    qtbot.waitUntil(lambda: f"{case} annotation" in viewer.layers and active.accept_button.isEnabled(),
                    timeout=60_000)
    layer = viewer.layers[f"{case} annotation"]
    edited = np.array(layer.data)
    edited[10:16, 10:16] = 2  # a cup stroke
    layer.data = edited
    click(qtbot, active.save_button)
    assert not errors
    with Project.open(active.project.root) as p:
        np.testing.assert_array_equal(p.load_annotation(case), edited)
        assert p.cohort.classes == {"rim": (1,), "cup": (2,)}  # the declared classes were kept

    # 4. the audit of their predictions, by sex, and its report
    audit.attr_a.setCurrentText("sex")
    click(qtbot, audit.run_button)
    qtbot.waitUntil(lambda: audit.audit is not None and audit.run_button.isEnabled(), timeout=60_000)
    assert audit.pred_edit.text() == str(png_cohort / "predictions") and "Δ" in audit.summary.text()
    assert {audit.groups_table.item(r, 0).text() for r in range(audit.groups_table.rowCount())} == {"F", "M"}
    shot(viewer, "new_user_audit")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "report"))
    click(qtbot, audit.export_button)
    assert (tmp_path / "report" / "report.html").is_file() and not errors
