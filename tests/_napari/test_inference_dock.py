"""The Model & inference dock in a real napari window, opened from Plugins › FairSeg."""

import re
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt


def _reference(cohort, case_id, **settings):
    from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint
    from napari_fairseg.progress import run_job

    ckpt = load_checkpoint(bundled_checkpoint("brain"))
    predictor = Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu", **settings))
    return run_job(predict_pool_job(cohort, predictor, [case_id], keep=True)).predictions[case_id]


def test_inference_dock_runs_on_the_case_and_the_cohort(make_napari_viewer, qtbot, open_dock, shot, tiny_brain,
                                                        tmp_path):
    viewer = make_napari_viewer()
    cohort_dock, dock = open_dock(viewer, "Cohort"), open_dock(viewer, "Model & inference")
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)  # nothing open yet: no crash, no job
    assert not dock.runner.busy
    cohort_dock.load(tiny_brain.source / "manifest.csv")
    case_id = tiny_brain.case_ids[0]
    cohort_dock.open_case(case_id)
    assert dock.model_combo.currentText() == "brain (bundled)"  # picked for a NIfTI cohort
    dock.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    # the click returns at once: the model loads in the worker (its first progress stage)
    assert not dock.run_case_button.isEnabled() and dock.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: f"{case_id} prediction" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: dock.run_case_button.isEnabled(), timeout=10_000)
    ref = _reference(tiny_brain, case_id)
    np.testing.assert_array_equal(viewer.layers[f"{case_id} prediction"].data, ref.label)
    np.testing.assert_allclose(viewer.layers[f"{case_id} entropy"].data, ref.maps["entropy"], atol=1e-6)
    assert viewer.layers[f"{case_id} entropy"].contrast_limits == [0.0, pytest.approx(np.log(2))]
    roi = viewer.layers[f"{case_id} ROI"].data.astype(bool)  # the outline of Eq. 1's dilated region
    assert roi.any() and not (roi & ~ref.maps["roi"]).any() and roi.sum() < ref.maps["roi"].sum()
    assert f"masked scaled entropy {ref.scores['masked_entropy']:.4f}" in dock.status.text()
    assert "cpu" in dock.status.text()
    # tiny_brain has 3 mm voxels; the bundled model's pipeline resamples them to its 1.5 mm: no warning
    assert dock.warning.isHidden()
    shot(viewer, "inference_dock")
    dock.uncertainty_combo.setCurrentText("mc")
    dock.passes.setValue(2)
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: f"{case_id} mutual information" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: dock.run_case_button.isEnabled(), timeout=10_000)
    assert sum(la.name == f"{case_id} prediction" for la in viewer.layers) == 1  # replaced, not stacked

    # opening another case removes this case's overlays: no old layers stay under the new image
    other = tiny_brain.case_ids[1]
    cohort_dock.open_case(other)
    assert [la.name for la in viewer.layers] == [other, f"{other} ground truth"]

    dock.out_dir.setText(str(tmp_path / "preds"))
    qtbot.mouseClick(dock.run_cohort_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: (tmp_path / "preds" / "scores.csv").is_file(), timeout=60_000)
    qtbot.waitUntil(lambda: "Predicted" in dock.status.text(), timeout=10_000)
    assert len(list((tmp_path / "preds").glob("brain_*.nii.gz"))) == len(tiny_brain)


def test_a_scan_unlike_the_training_data_gets_a_warning_beside_the_result(make_napari_viewer, qtbot, open_dock,
                                                                          tmp_path):
    from napari_fairseg.data.synthetic import make_sample

    narrow = make_sample("brain", tmp_path / "narrow", n_cases=2, seed=3, shape=(12, 12, 10), spacing=3.0)
    viewer = make_napari_viewer()
    cohort_dock, dock = open_dock(viewer, "Cohort"), open_dock(viewer, "Model & inference")
    cohort_dock.load(narrow.source)
    cohort_dock.open_case(narrow.case_ids[0])
    dock.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: f"{narrow.case_ids[0]} prediction" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: not dock.warning.isHidden(), timeout=10_000)
    assert "(size)" in dock.warning.text()  # 36 mm: the model saw 96 mm crops to whole heads
    assert "36×36×30 mm is far from the model's training images (96×96×72 to 198×234×190 mm)" in dock.warning.toolTip()


def test_a_bad_checkpoint_fails_in_the_worker_with_a_clear_message(make_napari_viewer, qtbot, open_dock, tiny_brain,
                                                                   tmp_path, monkeypatch):
    from napari_fairseg._napari.inference_dock import FILE

    shown = []
    monkeypatch.setattr("napari_fairseg._napari.workers.show_error", shown.append)
    viewer = make_napari_viewer()
    cohort_dock, dock = open_dock(viewer, "Cohort"), open_dock(viewer, "Model & inference")
    cohort_dock.load(tiny_brain.source / "manifest.csv")
    cohort_dock.open_case(tiny_brain.case_ids[0])
    bad = tmp_path / "not-a-model.pt"
    bad.write_bytes(b"this is not a checkpoint")
    dock.model_combo.setCurrentText(FILE)
    dock.model_path.setText(str(bad))
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(shown) and dock.run_case_button.isEnabled(), timeout=30_000)
    assert "not-a-model.pt" in shown[0] and shown[0].index("not-a-model.pt") > len("predict brain_000 failed: ")


def test_inference_dock_trains_a_model_and_selects_it(make_napari_viewer, qtbot, open_dock, tiny_brain, tmp_path):
    import shutil

    from napari_fairseg._napari.inference_dock import FILE
    from napari_fairseg.data.readers import open_cohort
    from napari_fairseg.models.checkpoint import load_checkpoint

    shutil.copytree(tiny_brain.source, tmp_path / "cohort")  # training writes models/ beside the cohort
    cohort = open_cohort(tmp_path / "cohort" / "manifest.csv")
    viewer = make_napari_viewer()
    cohort_dock, dock = open_dock(viewer, "Cohort"), open_dock(viewer, "Model & inference")
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


def test_a_scan_opened_on_its_own_runs_and_cancel_says_so(make_napari_viewer, qtbot, open_dock, tmp_path):
    """File › Open of one NIfTI (nibabel's test scan), then Run on this case; an MC run cancelled
    midway leaves the status saying it was cancelled."""
    import os

    import nibabel

    scan = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    viewer = make_napari_viewer()
    dock = open_dock(viewer, "Model & inference")
    [layer] = viewer.open(scan, plugin="napari-fairseg")
    assert dock.status.text().startswith("anatomical is open")
    dock.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "anatomical prediction" in viewer.layers and dock.run_case_button.isEnabled(),
                    timeout=60_000)
    assert viewer.layers["anatomical prediction"].data.shape == layer.data.shape
    dock.uncertainty_combo.setCurrentText("mc")
    dock.passes.setValue(64)
    qtbot.mouseClick(dock.run_case_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dock.runner.last is not None and dock.runner.last.stage == "forward", timeout=60_000)
    qtbot.mouseClick(dock.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=30_000)
    assert "cancelled" in dock.status.text() and "mutual information" not in " ".join(la.name for la in viewer.layers)


def test_inference_dock_adapts_to_a_target_cohort_and_compares(make_napari_viewer, qtbot, open_dock, shot, tmp_path,
                                                                monkeypatch):
    """Seed 002 from the dock: source cohort open, a source model selected, a target folder typed;
    Adapt runs in the background and shows source-only and adapted predictions side by side."""
    from napari_fairseg._napari.inference_dock import FILE
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.progress import run_job
    from napari_fairseg.training.trainer import TrainConfig, model_config_for, train_job
    from tests.conftest import write_domain

    source = write_domain(tmp_path / "source", domain="source")
    target = write_domain(tmp_path / "target", domain="inverted")  # dark discs on a bright field
    run_job(train_job(source, model_config_for(source, network="unet", features=(4, 8)),
                      TrainConfig(epochs=2, device="cpu", augment=False), out=tmp_path / "src.pt"))
    viewer = make_napari_viewer()
    cohort_dock, dock = open_dock(viewer, "Cohort"), open_dock(viewer, "Model & inference")
    qtbot.mouseClick(dock.adapt_button, Qt.MouseButton.LeftButton)  # nothing open: an error, no job
    assert not dock.runner.busy
    cohort_dock.load(source.source)
    cohort_dock.open_case(source.case_ids[0])
    dock.model_combo.setCurrentText(FILE)
    dock.model_path.setText(str(tmp_path / "src.pt"))
    dock.device_combo.setCurrentText("cpu")
    dock.target_path.setText(str(source.source.parent))  # the source again: refused before any job
    qtbot.mouseClick(dock.adapt_button, Qt.MouseButton.LeftButton)
    assert not dock.runner.busy
    dock.target_path.setText(str(target.source.parent))
    dock.adapt_epochs.setValue(2)
    qtbot.mouseClick(dock.adapt_button, Qt.MouseButton.LeftButton)
    assert not dock.adapt_button.isEnabled() and dock.cancel_button.isEnabled()
    case_id = target.cases.loc[target.cases["split"] == "test", "case_id"].iloc[0]
    qtbot.waitUntil(lambda: f"adapted: {case_id} prediction" in viewer.layers, timeout=180_000)
    qtbot.waitUntil(lambda: dock.adapt_button.isEnabled(), timeout=10_000)
    left, right = viewer.layers[f"source only: {case_id} prediction"], viewer.layers[f"adapted: {case_id} prediction"]
    assert right.translate[-1] > left.translate[-1] + left.data.shape[-1] * left.scale[-1]  # side by side
    assert f"adapted: {case_id} entropy" in viewer.layers and f"source only: {case_id}" in viewer.layers
    out = target.source.parent / "models" / f"{source.name}-to-{target.name}-uuds.pt"
    assert dock.model_combo.currentText() == FILE and Path(dock.model_path.text()) == out
    assert load_checkpoint(out).config.extra["uuds"]["target"] == target.name
    assert "source only (left) and adapted (right)" in dock.status.text()
    assert "(target contrast inverted first)" in dock.status.text()
    scores = re.search(r"source only (\d\.\d+), adapted (\d\.\d+)", dock.status.text())
    assert scores and float(scores[2]) > float(scores[1]), dock.status.text()  # inverted: the source model fails
    # the open case is now the target's comparison case: adapting again says what to open
    errors = []
    monkeypatch.setattr("napari_fairseg._napari.inference_dock.show_error", errors.append)
    qtbot.mouseClick(dock.adapt_button, Qt.MouseButton.LeftButton)
    assert not dock.runner.busy and "belongs to" in errors[-1] and "the cohort typed as the target" in errors[-1]
    shot(viewer, "inference_dock_adapt")
