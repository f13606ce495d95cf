"""The Cohort dock in a real napari window, opened from Plugins › FairSeg and driven by its buttons."""

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from napari_fairseg._napari.tour import DOCKS
from napari_fairseg.data.arrays import load_case, save_label


def test_every_dock_opens_from_the_plugins_menu(make_napari_viewer):
    import npe2

    viewer = make_napari_viewer()
    manifest = npe2.PluginManager.instance().get_manifest("napari-fairseg")
    assert [w.display_name for w in manifest.contributions.widgets] == list(DOCKS)
    for name in DOCKS:  # what Plugins › FairSeg › <name> calls
        dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-fairseg", name)
        assert dock_widget.widget() is widget and widget.viewer.title == viewer.title  # the viewer was injected
    assert len(viewer.window.dock_widgets) == len(DOCKS)


def test_cohort_dock_loads_filters_and_opens_a_case(make_napari_viewer, qtbot, open_dock, shot, tiny_brain, tmp_path):
    viewer = make_napari_viewer(show=True)  # shown: the table is double-clicked where a person would
    dock = open_dock(viewer, "Cohort")
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
    assert [la.name for la in viewer.layers] == [first, f"{first} ground truth"]
    case = load_case(tiny_brain, first)
    np.testing.assert_array_equal(viewer.layers[1].data, case.label)
    np.testing.assert_allclose(viewer.layers[0].scale, case.spacing)  # physical voxel size
    shot(viewer, "cohort_dock")
    other = expected[-1]
    item = next(dock.table.item(r, 0) for r in range(dock.table.rowCount()) if dock.table.item(r, 0).text() == other)
    dock.table.scrollToItem(item)
    centre = dock.table.visualItemRect(item).center()
    qtbot.mouseClick(dock.table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    qtbot.mouseDClick(dock.table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert [la.name for la in viewer.layers] == [other, f"{other} ground truth"]  # replaced, not stacked

    # with a predictions folder, the case's latest prediction opens too, in colours apart from the truth's
    pred = np.zeros_like(case.label)
    pred[5:9, 5:9, 5:9] = 1
    save_label(tiny_brain, tmp_path / "preds" / f"{first}.nii.gz", pred, like=case)
    dock.pred_edit.setText(str(tmp_path / "preds"))
    dock.open_case(first)
    truth, prediction = viewer.layers[f"{first} ground truth"], viewer.layers[f"{first} prediction"]
    np.testing.assert_array_equal(prediction.data, pred)
    assert not np.allclose(truth.colormap.map(np.array([1])), prediction.colormap.map(np.array([1])))


def test_a_failed_load_clears_the_previous_cohort_and_says_why_first(make_napari_viewer, qtbot, open_dock,
                                                                    tiny_brain, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Cohort")
    shown = []
    monkeypatch.setattr("napari_fairseg._napari.cohort_dock.show_error", shown.append)
    assert dock.load(tiny_brain.source / "manifest.csv") and dock.table.rowCount() == len(tiny_brain)
    deep = tmp_path / ("a-very-long-folder-name-" * 4) / "missing.csv"
    dock.path_edit.setText(str(deep))
    qtbot.mouseClick(dock.load_button, Qt.MouseButton.LeftButton)
    assert dock.cohort is None and dock.table.rowCount() == 0  # no stale table under the error
    assert shown[0].startswith("Cannot open cohort: ") and "missing.csv" in shown[0]
    reason = shown[0].removeprefix("Cannot open cohort: ")
    assert not reason.startswith(str(tmp_path))  # the reason comes first, not a long path
    assert "Not loaded" in dock.info.text()


def test_a_folder_of_png_photos_with_a_split_column_and_declared_classes(make_napari_viewer, qtbot, open_dock,
                                                                         png_cohort, monkeypatch):
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Cohort")
    shown = []
    monkeypatch.setattr("napari_fairseg._napari.cohort_dock.show_error", shown.append)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(png_cohort))
    qtbot.mouseClick(dock.folder_button, Qt.MouseButton.LeftButton)  # Folder… picks the folder
    assert dock.cohort is not None and dock.table.rowCount() == 8  # metadata.csv's split column is read
    splits = {dock.table.item(r, 0).text(): dock.table.item(r, 1).text() for r in range(8)}
    assert splits == {f"eye{i:02d}": "test" if i >= 5 else "train" for i in range(8)}
    dock.open_case("eye00")  # masks hold 0/1/2 but the default class is foreground=1: refused, clearly
    assert "not among the declared classes" in shown[-1] and "declared" in shown[-1]
    assert "eye00" not in viewer.layers
    dock.classes_edit.setText("rim=1, cup=2")
    qtbot.mouseClick(dock.load_button, Qt.MouseButton.LeftButton)
    assert "rim=1; cup=2" in dock.info.text()
    dock.open_case("eye00")
    assert [la.name for la in viewer.layers] == ["eye00", "eye00 ground truth"]
    assert viewer.layers["eye00"].rgb and set(np.unique(viewer.layers["eye00 ground truth"].data)) == {0, 1, 2}
    assert viewer.layers["eye00"].metadata["fairseg"]["classes"] == {"rim": [1], "cup": [2]}  # other docks see them


def test_classes_come_from_a_models_checkpoint_and_bad_text_is_refused(make_napari_viewer, open_dock, png_cohort,
                                                                        monkeypatch):
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Cohort")
    shown = []
    monkeypatch.setattr("napari_fairseg._napari.cohort_dock.show_error", shown.append)
    dock.classes_from_model("fundus")
    from napari_fairseg.data.classes import parse_classes
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint

    assert parse_classes(dock.classes_edit.text()) == load_checkpoint(bundled_checkpoint("fundus")).classes
    dock.classes_edit.setText("rim=one")
    assert not dock.load(png_cohort)
    assert "whole numbers" in shown[-1] and dock.cohort is None


@pytest.mark.parametrize("text, expected", [
    ("rim=1, cup=2", {"rim": (1,), "cup": (2,)}),
    ("disc=1,2; cup=2", {"disc": (1, 2), "cup": (2,)}),
    ("", None),
])
def test_parse_classes(text, expected):
    from napari_fairseg.data.classes import format_classes, parse_classes

    assert parse_classes(text) == expected
    if expected:
        assert parse_classes(format_classes(expected)) == expected


@pytest.mark.parametrize("text", ["rim", "rim=0", "rim=1; rim=2", "rim=a", "=1"])
def test_parse_classes_refuses_bad_declarations(text):
    from napari_fairseg.data.classes import parse_classes
    from napari_fairseg.errors import InputDataError

    with pytest.raises(InputDataError, match="classes"):
        parse_classes(text)


def test_metadata_split_column_joins_a_folder_without_splits(png_cohort):
    from napari_fairseg.data.readers import open_cohort

    cohort = open_cohort(png_cohort, classes={"rim": (1,), "cup": (2,)})
    expected = pd.read_csv(png_cohort / "metadata.csv").set_index("case_id")["split"]
    assert cohort.cases.set_index("case_id")["split"].to_dict() == expected.to_dict()


def test_file_button_opens_a_manifest_picked_in_the_dialog(make_napari_viewer, qtbot, open_dock, tiny_brain,
                                                          monkeypatch):
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Cohort")
    picked = str(tiny_brain.source / "manifest.csv")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (picked, "Manifest (*.csv)"))
    qtbot.mouseClick(dock.browse_button, Qt.MouseButton.LeftButton)
    assert dock.path_edit.text() == picked and dock.table.rowCount() == len(tiny_brain)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))  # the user cancels the dialog
    qtbot.mouseClick(dock.browse_button, Qt.MouseButton.LeftButton)
    assert dock.cohort is not None and dock.table.rowCount() == len(tiny_brain)  # nothing changed


def test_synthetic_cases_join_the_table_and_show_beside_real_ones(make_napari_viewer, qtbot, open_dock, shot,
                                                                   fundus, tmp_path, monkeypatch):
    from napari_fairseg.progress import run_job
    from napari_fairseg.training.image_generator import ImageGeneratorConfig
    from napari_fairseg.training.mask_generator import MaskGeneratorConfig
    from napari_fairseg.training.synthesize import synthesize_job

    made = run_job(synthesize_job(fundus, "race", 2, tmp_path / "syn",
                                  masks=MaskGeneratorConfig(steps=20, batch_size=4, width=16, n_points=64),
                                  images=ImageGeneratorConfig(size=16, width=8, steps=4, batch_size=2, sample_steps=2)))
    viewer = make_napari_viewer(show=True)
    dock = open_dock(viewer, "Cohort")
    dock.path_edit.setText(str(fundus.source))
    qtbot.mouseClick(dock.load_button, Qt.MouseButton.LeftButton)
    assert not dock.gallery_button.isEnabled()
    qtbot.mouseClick(dock.gallery_button, Qt.MouseButton.LeftButton)  # disabled: nothing happens
    assert len(viewer.layers) == 0
    dock.synthetic_edit.setText(str(tmp_path / "syn"))
    qtbot.keyClick(dock.synthetic_edit, Qt.Key.Key_Return)
    assert dock.table.rowCount() == len(fundus) + len(made) and f"{len(fundus)} real + 6 synthetic" in dock.info.text()
    dock.attribute_combo.setCurrentText("origin")
    dock.value_combo.setCurrentText("synthetic")
    assert sorted(dock.visible_case_ids()) == sorted(made.case_ids)
    dock.add_synthetic(tmp_path / "syn")  # added again: replaced, not doubled
    assert dock.table.rowCount() == len(fundus) + len(made)
    dock.attribute_combo.setCurrentText("race")
    dock.value_combo.setCurrentText("Black")
    qtbot.mouseClick(dock.gallery_button, Qt.MouseButton.LeftButton)
    image, masks = viewer.layers
    assert image.name == "gallery race = Black (top: real, bottom: synthetic)"
    n_black = int((fundus.cases["race"] == "Black").sum())
    assert viewer.text_overlay.visible and viewer.text_overlay.text == (
        f"race = Black · top row: real (6 of {n_black}) · bottom row: synthetic (2 of 2)")
    assert viewer.layers.selection.active is image  # a click does not paint on the gallery's masks
    shown = image.metadata["fairseg"]["gallery"]
    black = fundus.cases.loc[fundus.cases["race"] == "Black", "case_id"].tolist()
    assert shown["real"] == black[:6] and shown["synthetic"] == made.cases.loc[made.cases["race"] == "Black", "case_id"].tolist()
    # top-left tile is the first real case, bottom-left the first synthetic one, each with its mask
    real, fake = load_case(fundus, black[0]), load_case(made, shown["synthetic"][0])
    h = real.label.shape[0]
    np.testing.assert_array_equal(image.data[:h, :h], real.image[0])
    np.testing.assert_array_equal(masks.data[-h:, :h], fake.label)
    path = shot(viewer, "cohort_dock_gallery")
    assert dock.grab().save(str(path.with_name("cohort_dock_synthetic_panel.png")))  # the dock itself
    errors = []
    monkeypatch.setattr("napari_fairseg._napari.cohort_dock.show_error", errors.append)
    dock.value_combo.setCurrentText("(all)")
    qtbot.mouseClick(dock.gallery_button, Qt.MouseButton.LeftButton)
    assert errors == ["Choose a subgroup first (e.g. race = Black), then Real vs synthetic"]
    assert [la.name for la in viewer.layers] == [image.name, masks.name]  # the gallery stays
    dock.open_case(black[0])
    assert not viewer.text_overlay.visible and [la.name for la in viewer.layers][0] == black[0]
