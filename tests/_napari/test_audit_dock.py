"""The Fairness audit dock in a real napari window, opened from Plugins › FairSeg."""

import numpy as np
import pytest
from matplotlib.backend_bases import MouseEvent
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_fairseg.progress import run_job
from napari_fairseg.report.audit import AuditConfig, audit_job


@pytest.fixture
def brain_predictions(tiny_brain, tmp_path):
    from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint

    preds = tmp_path / "preds"
    ckpt = load_checkpoint(bundled_checkpoint("brain"))
    run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu")),
                             out_dir=preds, write_maps=False))
    return preds


def _click_cell(dock, row_label, col_label):
    ax = dock.figure.axes[0]
    row = [t.get_text() for t in ax.get_yticklabels()].index(row_label)
    col = [t.get_text() for t in ax.get_xticklabels()].index(col_label)
    x, y = ax.transData.transform((col, row))
    MouseEvent("button_press_event", dock.canvas, x, y, button=1)._process()


def test_audit_dock_tables_heatmap_drilldown_and_export(make_napari_viewer, qtbot, open_dock, shot, tiny_brain,
                                                        brain_predictions, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Fairness audit")
    assert not dock.export_button.isEnabled()  # nothing to export yet
    assert dock.set_cohort(tiny_brain.source / "manifest.csv")
    dock.pred_edit.setText(str(brain_predictions))
    dock.attr_a.setCurrentText("group")
    dock.attr_b.setCurrentText("sex")
    dock.split_combo.setCurrentText("(all)")
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.audit is not None, timeout=60_000)
    ref = run_job(audit_job(tiny_brain, brain_predictions,
                            AuditConfig(attributes=("group", "sex"), min_group_size=5, n_boot=500)))
    e = ref.summary["attributes"]["group"]["metrics"]["dice_caudate"]
    assert dock.metric_combo.currentText() == "dice_caudate"
    assert f"Δ {e['delta']:.4f}" in dock.summary.text() and f"ES (ESSP) {e['es']:.4f}" in dock.summary.text()
    g = ref.groups[(ref.groups["attribute"] == "group") & (ref.groups["metric"] == "dice_caudate")]
    shown = {dock.groups_table.item(r, 0).text(): dock.groups_table.item(r, 2).text() for r in range(len(g))}
    assert shown == {row.group: f"{row.mean:.4f}" for row in g.itertuples()}

    # Dice on a fixed 0–1 scale with a colour bar: a colour means the same Dice in every audit
    image = dock.figure.axes[0].images[0]
    assert image.get_clim() == (0.0, 1.0) and len(dock.figure.axes) == 2

    # click the Group 1 × F cell of the heatmap: its cases are listed, and one opens with its prediction
    _click_cell(dock, "Group 1", "F")
    c = tiny_brain.cases
    expected = sorted(c.loc[(c["group"] == "Group 1") & (c["sex"] == "F"), "case_id"])
    listed = sorted(dock.cases_list.item(i).text() for i in range(dock.cases_list.count()))
    assert listed == expected and listed
    dock.cases_list.itemDoubleClicked.emit(dock.cases_list.item(0))
    assert [la.name for la in viewer.layers][-1] == f"{dock.cases_list.item(0).text()} prediction"
    shot(viewer, "audit_dock")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "report"))
    assert dock.export_button.isEnabled()
    qtbot.mouseClick(dock.export_button, Qt.MouseButton.LeftButton)
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "groups.csv").is_file()


def test_a_failed_audit_clears_the_previous_results(make_napari_viewer, qtbot, open_dock, tiny_brain,
                                                   brain_predictions, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_fairseg._napari.workers.show_error", shown.append)
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Fairness audit")
    dock.set_cohort(tiny_brain.source / "manifest.csv")
    dock.pred_edit.setText(str(brain_predictions))
    dock.attr_a.setCurrentText("group")
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.audit is not None and dock.run_button.isEnabled(), timeout=60_000)
    assert dock.groups_table.rowCount() > 0 and dock.export_button.isEnabled()

    dock.pred_edit.setText(str(tmp_path / "no-predictions-here"))
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    assert dock.groups_table.rowCount() == 0 and not dock.export_button.isEnabled()  # cleared as it starts
    qtbot.waitUntil(lambda: bool(shown) and dock.run_button.isEnabled(), timeout=60_000)
    assert dock.audit is None and dock.groups_table.rowCount() == 0 and not dock.figure.axes
    assert not dock.export_button.isEnabled() and dock.summary.text().startswith("Audit failed: ")


def test_intersection_cells_match_the_table_counts():
    from napari_fairseg.metrics.subgroups import intersection_cells, intersection_table

    ids = ["a", "b", "c", "d", "e"]
    a = ["x", "x", "y", None, "y"]
    b = ["p", "q", "p", "p", "p"]
    cells = intersection_cells(ids, a, b)
    assert cells == {("x", "p"): ["a"], ("x", "q"): ["b"], ("y", "p"): ["c", "e"], ("unknown", "p"): ["d"]}
    _, count = intersection_table(np.ones(5), a, b)
    assert {k: len(v) for k, v in cells.items()} == {(r, c): int(count.loc[r, c]) for r in count.index
                                                      for c in count.columns if count.loc[r, c]}


def test_a_folder_without_splits_and_html_in_a_group_value(make_napari_viewer, qtbot, open_dock, tmp_path):
    """A NIfTI folder with no split information audits over all cases; a group value holding
    markup is shown as text, not rendered (the summary label is rich text)."""
    import nibabel as nib
    import pandas as pd

    folder, preds = tmp_path / "scans", tmp_path / "preds"
    rows = []
    for i in range(6):
        img = np.random.default_rng(i).random((10, 10, 6)).astype(np.float32)
        lab = np.zeros((10, 10, 6), np.uint8)
        lab[2:7, 2:7, 1:4] = 1
        for where, data in ((folder / f"s{i}.nii.gz", img), (folder / f"s{i}_mask.nii.gz", lab),
                            (preds / f"s{i}.nii.gz", np.roll(lab, i % 3, axis=0))):
            where.parent.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(where))
        rows.append({"case_id": f"s{i}", "site": "<span style='font-size:40px'>HACKED</span><!--" if i % 2 else "A"})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Fairness audit")
    assert dock.set_cohort(folder)
    assert [dock.split_combo.itemText(i) for i in range(dock.split_combo.count())] == ["(all)"]
    dock.pred_edit.setText(str(preds))
    dock.attr_a.setCurrentText("site")
    qtbot.mouseClick(dock.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.audit is not None and dock.run_button.isEnabled(), timeout=60_000)
    assert "&lt;span" in dock.summary.text() and "<span" not in dock.summary.text()
    assert "ES-Dice" in dock.summary.text()  # nothing after the value was swallowed
