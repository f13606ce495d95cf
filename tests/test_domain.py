"""Inputs unlike a model's training data are flagged: training-geometry records and input warnings."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_fairseg.cli import main
from napari_fairseg.data.arrays import load_image
from napari_fairseg.inference import input_warnings
from napari_fairseg.inference.domain import (
    SIZE_TOLERANCE,
    SPACING_TOLERANCE,
    UNKNOWN_GEOMETRY,
    case_summary,
    check_input,
    summarise_warnings,
    training_geometry,
)
from napari_fairseg.models import load_checkpoint
from napari_fairseg.models.zoo import bundled_checkpoint


@pytest.fixture(scope="module")
def brain_model():
    return load_checkpoint(bundled_checkpoint("brain"))


@pytest.fixture(scope="module")
def fundus_model():
    return load_checkpoint(bundled_checkpoint("fundus"))


def kinds(source, image, spacing=None):
    return [w.kind for w in check_input(source, image, spacing)]


def test_mni152_at_1mm_is_resampled_by_the_brain_model_and_would_be_warned_about_otherwise(brain_model):
    from nilearn.datasets import load_mni152_template

    from napari_fairseg.data.pipeline import pipeline_of

    mni = load_mni152_template(resolution=1)
    image = np.asarray(mni.dataobj, dtype=np.float32)[None]
    zooms = mni.header.get_zooms()[:3]
    assert pipeline_of(brain_model).spacing == (1.5, 1.5, 1.5)
    # what prediction asks: the pipeline resamples, and 197×233×189 mm is a whole head it was trained on
    assert input_warnings(brain_model, image, zooms, resampled=True) == []
    found = input_warnings(brain_model, image, zooms)  # a model that predicted on the scan's own grid
    assert len(found) == 1, found
    assert found[0].startswith("spacing 1×1×1 mm differs from the model's training spacing 1.5×1.5×1.5 mm (×0.67)")
    assert "resample" in found[0]
    assert kinds(brain_model, image, (1.0, 1.0, 1.0)) == ["spacing"]  # same T1 contrast: no intensity


def test_the_brain_sample_cohort_itself_gives_no_warning(tmp_path, brain_model):
    from napari_fairseg.data.synthetic import make_sample

    cohort = make_sample("brain", tmp_path / "b", n_cases=3, seed=11)  # the zoo cohort's generator, new cases
    for cid in cohort.case_ids:
        case = load_image(cohort, cid)
        assert input_warnings(brain_model, case.image, case.spacing) == [], cid


def test_the_fundus_sample_gives_no_warning_and_retina_rgb_warns(fundus, fundus_model):
    for cid in fundus.case_ids:
        case = load_image(fundus, cid)
        assert input_warnings(fundus_model, case.image, case.spacing) == [], cid
    from skimage.data import retina

    rgb = np.moveaxis(retina(), -1, 0)  # (3, 1411, 1411) uint8
    found = check_input(fundus_model, rgb, (1.0, 1.0))
    assert [w.kind for w in found] == ["channels", "size"]
    assert "3 channel(s) but the model was trained on 1" in found[0].message
    assert "1411×1411 pixels" in found[1].message and "128×128 pixels" in found[1].message
    assert kinds(fundus_model, rgb.mean(axis=0)) == ["size"]  # grey, no channel axis: one channel


def test_a_checkpoint_without_a_record_gives_one_unknown_geometry_warning(brain_model):
    old = {k: v for k, v in brain_model.meta.items() if k != "training_geometry"}
    image = np.zeros((1, 300, 300, 300), np.float32)
    assert input_warnings(old, image, (0.5, 0.5, 0.5)) == [UNKNOWN_GEOMETRY]


def _record(spacing=(1.5, 1.5, 1.5), size=(64, 64, 48), lo=0.0, hi=1.0):
    rng = np.random.default_rng(0)
    image = rng.uniform(lo, hi, (1, *size)).astype(np.float32)
    return training_geometry([case_summary(image, spacing)]), image


def test_thresholds_are_the_documented_ones():
    record, image = _record()
    inside, outside = 1.5 * SPACING_TOLERANCE * 0.99, 1.5 * SPACING_TOLERANCE * 1.01
    assert kinds(record, image, (inside, 1.5, 1.5)) == []
    assert kinds(record, image, (outside, 1.5, 1.5)) == ["spacing"]
    assert kinds(record, image, (1.5, 1.5, 1.5 / SPACING_TOLERANCE / 1.01)) == ["spacing"]
    assert kinds(record, image, None) == []  # spacing unknown: not compared
    small = int(64 / SIZE_TOLERANCE) + 1
    assert kinds(record, image[:, :small], (1.5,) * 3) == []
    assert kinds(record, image[:, :small - 2], (1.5,) * 3) == ["size"]
    assert kinds(record, image * 1000, (1.5,) * 3) == ["intensity"]  # raw 0–1000 against 0–1
    assert kinds(record, image + 0.2, (1.5,) * 3) == []  # a shift within a quarter width
    assert kinds(record, image[0], (1.5,) * 3) == []  # no channel axis: one channel
    assert kinds(record, image[0, 0], (1.5, 1.5)) == ["dimensions"]


def test_summary_counts_cases_per_kind():
    record, image = _record()
    per_case = {"a": check_input(record, image, (1.0, 1.0, 1.0)), "b": check_input(record, image, (1.0, 1.0, 1.0)),
                "c": check_input(record, image, (0.8, 0.8, 0.8)), "d": check_input(record, image, (1.5,) * 3)}
    lines = summarise_warnings(per_case)
    assert len(lines) == 1 and lines[0].startswith("3 of 4 case(s), e.g. a: spacing 1×1×1 mm")


@pytest.fixture(scope="module")
def narrow_brain(tmp_path_factory):
    """Brain crops of 12×12×10 voxels at 3 mm: a 36 mm field of view, far narrower than any the
    bundled brain model saw (96 mm crops to whole heads)."""
    from napari_fairseg.data.synthetic import make_sample

    cohort = make_sample("brain", tmp_path_factory.mktemp("narrow"), n_cases=3, seed=3, shape=(12, 12, 10),
                         spacing=3.0)
    return cohort.source


def test_fairseg_predict_prints_each_warning_once_and_writes_them_to_scores(tmp_path, narrow_brain, capsys):
    rc = main(["--quiet", "predict", str(narrow_brain), "--model", "brain", "--out", str(tmp_path / "p"),
               "--device", "cpu", "--uncertainty", "none"])
    assert rc == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fairseg: warning:")]
    assert len(lines) == 1, err  # one line for the three cases
    assert lines[0].startswith("fairseg: warning: 3 of 3 case(s): field of view 36×36×30 mm is far from the "
                               "model's training images (96×96×72 to 198×234×190 mm)")
    scores = pd.read_csv(tmp_path / "p" / "scores.csv")
    assert len(scores) == 3
    for text in scores["warnings"]:
        assert text.startswith("field of view 36×36×30 mm") and " | " not in text


def test_fairseg_predict_on_its_own_training_kind_warns_nothing(tmp_path, capsys):
    from pathlib import Path

    fundus_dir = Path(__file__).resolve().parent.parent / "sample_data" / "fundus"
    rc = main(["--quiet", "predict", str(fundus_dir), "--model", "fundus", "--out", str(tmp_path / "p"),
               "--device", "cpu", "--split", "test", "--uncertainty", "none", "--no-maps"])
    assert rc == 0
    assert "warning" not in capsys.readouterr().err
    scores = pd.read_csv(tmp_path / "p" / "scores.csv", keep_default_na=False)
    assert set(scores["warnings"]) == {""}


def test_mni152_through_the_pool_job_finds_the_caudate_without_warnings(tmp_path, brain_model):
    """The dock's path on nilearn's whole MNI152 (2 mm for speed): no warning, and the caudate found."""
    from nilearn.datasets import load_mni152_template

    from napari_fairseg.data.manifest import Cohort
    from napari_fairseg.inference import InferenceConfig, predict_cases_job
    from napari_fairseg.progress import run_job

    mni = load_mni152_template(resolution=2)
    path = tmp_path / "mni.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(mni.dataobj, dtype=np.float32), mni.affine), str(path))
    cohort = Cohort(pd.DataFrame([{"case_id": "mni", "image": str(path), "label": "", "split": "test"}]),
                    "nifti", {"caudate": (1,)}, "mni")
    res = run_job(predict_cases_job(cohort, "brain", keep=True,
                                    settings=InferenceConfig(device="cpu", uncertainty="none")))
    assert res.warnings == {} and res.warning_summary == []  # resampled to 1.5 mm, a whole head as trained
    # and the model finds the left caudate the sample derives from this template (issue 12's check)
    from scipy import ndimage

    from napari_fairseg.data.synthetic import brain_template

    _, caudate, t_aff = brain_template()
    to_1mm = np.linalg.inv(t_aff) @ mni.affine
    grid = np.indices(mni.shape, dtype=np.float64).reshape(3, -1)
    truth = ndimage.map_coordinates(caudate.astype(np.float32), to_1mm[:3, :3] @ grid + to_1mm[:3, 3:4],
                                    order=1).reshape(mni.shape) > 0.5
    pred = res.predictions["mni"].label.reshape(mni.shape) > 0  # on the scan's own 2 mm grid
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.7  # measured 0.83
    assert 0.8 < pred.sum() / truth.sum() < 1.4


def test_predict_help_names_the_bundled_models_demo_models(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--help"])
    assert stop.value.code == 0
    assert "bundled DEMO models, trained on synthetic data" in " ".join(capsys.readouterr().out.split())


def test_an_rgb_photo_on_a_one_channel_model_is_converted_to_grey_with_a_note(tmp_path):
    from PIL import Image

    from napari_fairseg.data.readers import open_cohort
    from napari_fairseg.inference import InferenceConfig, predict_cases_job
    from napari_fairseg.models.preprocess import GREY_NOTE, LUMA, match_channels
    from napari_fairseg.progress import run_job

    rng = np.random.default_rng(0)
    rgb = (rng.random((3, 48, 40)) * 255).astype(np.float32)
    grey, note = match_channels(rgb, 1)
    np.testing.assert_allclose(grey[0], LUMA[0] * rgb[0] + LUMA[1] * rgb[1] + LUMA[2] * rgb[2], rtol=1e-6)
    assert note == GREY_NOTE and match_channels(rgb, 3) == (rgb, None)  # a 3-channel model takes it as it is

    Image.fromarray(np.moveaxis(rgb, 0, -1).astype(np.uint8)).save(tmp_path / "eye.png")
    cohort = open_cohort(tmp_path, classes={"cup": (2,), "rim": (1,), "disc": (1, 2)})
    result = run_job(predict_cases_job(cohort, "fundus", ["eye"], settings=InferenceConfig(device="cpu"), keep=True))
    assert result.predictions["eye"].label.shape == (48, 40)
    assert result.warnings["eye"][0].message == GREY_NOTE and GREY_NOTE in result.scores.loc[0, "warnings"]


def test_a_resampling_model_compares_fields_of_view_in_mm_not_voxel_counts(brain_model):
    """A 0.5 mm scan of the same 96 mm field has 3× the voxels: no warning when the pipeline
    resamples, a size warning when it does not; a 300 mm field is far from 96 mm either way."""
    box = {"median": [64, 64, 48], "min": [64, 64, 48], "max": [64, 64, 48]}
    record = {**brain_model.meta["training_geometry"], "size": box,
              "spacing": {k: [1.5, 1.5, 1.5] for k in ("median", "min", "max")}}
    fine = np.random.default_rng(0).uniform(0, 1, (1, 192, 192, 144)).astype(np.float32)
    assert [w.kind for w in check_input(record, fine, (0.5, 0.5, 0.5), resampled=True)] == []
    assert [w.kind for w in check_input(record, fine, (0.5, 0.5, 0.5))] == ["spacing", "size"]
    wide = check_input(record, fine, (1.6, 1.6, 2.1), resampled=True)
    assert [w.kind for w in wide] == ["size"]
    assert wide[0].message.startswith("field of view 307×307×302 mm is far from the model's training images "
                                      "(96×96×72 mm)")


def test_a_scan_in_scanner_units_is_not_warned_when_the_pipeline_normalises(tmp_path, brain_model, capsys):
    """MNI152 ×1000 as int16 (scanner-like units): the same prediction, and no intensity warning,
    since the model z-scores every scan; a model that does not normalise is still warned."""
    from nilearn.datasets import load_mni152_template

    mni = load_mni152_template(resolution=2)
    data = np.asarray(mni.dataobj, dtype=np.float32)
    for name, arr in (("plain", data), ("scanner", (data * 1000).astype(np.int16))):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(arr, mni.affine), str(tmp_path / name / "mni.nii.gz"))
        assert main(["--quiet", "predict", str(tmp_path / name), "--model", "brain", "--out", str(tmp_path / f"p{name}"),
                     "--device", "cpu", "--uncertainty", "none"]) == 0
    assert "warning" not in capsys.readouterr().err
    a, b = (np.asarray(nib.load(str(tmp_path / f"p{n}" / "mni.nii.gz")).dataobj) for n in ("plain", "scanner"))
    assert (a > 0).sum() > 500 and np.mean(a == b) > 0.999
    scaled = (data * 1000)[None]
    assert kinds(brain_model, scaled, None) == ["intensity"]  # compared when nothing normalises
    assert check_input(brain_model, scaled, None, normalised=True) == []
