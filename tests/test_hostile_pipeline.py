"""Hostile and careless inputs to issue 12's pipeline (the attack on its first version): a
checkpoint whose pipeline or training record is crafted, degenerate affines, images the tissue
normalisation cannot measure, and command-line slips. Each ends in one line naming the file."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from napari_fairseg.cli import main
from napari_fairseg.data.intensity import normalise_channels
from napari_fairseg.models.checkpoint import load_checkpoint, save_checkpoint
from napari_fairseg.models.zoo import bundled_checkpoint


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A folder with one 40×40×30 scan of 1.5 mm voxels (values around 100)."""
    folder = tmp_path_factory.mktemp("scans")
    data = np.random.default_rng(0).normal(100, 10, (40, 40, 30)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), str(folder / "c0.nii.gz"))
    return folder


def brain_with(tmp_path, **meta):
    """The bundled brain checkpoint with some metadata replaced."""
    brain = load_checkpoint(bundled_checkpoint("brain"))
    return str(save_checkpoint(tmp_path / "hostile.pt", brain.build("cpu"), brain.config, {**brain.meta, **meta}))


def predict(scans, model, out, capsys) -> tuple[int, str]:
    rc = main(["--quiet", "predict", str(scans), "--model", model, "--out", str(out), "--device", "cpu",
               "--uncertainty", "none"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_a_pipeline_that_would_multiply_the_voxels_is_refused_before_resampling(tmp_path, scans, capsys):
    pipe = json.loads(load_checkpoint(bundled_checkpoint("brain")).meta["pipeline"])
    model = brain_with(tmp_path, pipeline=json.dumps({**pipe, "spacing": [0.12, 0.12, 0.12]}))
    rc, err = predict(scans, model, tmp_path / "p", capsys)
    assert rc == 2 and "would resample this 1.5×1.5×1.5 mm scan to 0.12×0.12×0.12 mm, 1953× its voxels" in err
    assert "(at most 64×)" in err and not (tmp_path / "p" / "c0.nii.gz").exists()


@pytest.mark.parametrize(("meta", "message"), [
    ({"pipeline_spacing": [10 ** 400, 1, 1]}, "checkpoint's preprocessing refused"),
    ({"pipeline_text": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
    ({"geometry": {"channels": None}}, "training geometry is invalid: channels must be 1 … 64"),
    ({"geometry": {"size": "big"}}, "training geometry is invalid"),
    ({"geometry": {"size": {"median": [0, 0, 0], "min": [0, 0, 0], "max": [0, 0, 0]}}},
     "size median must hold numbers in [1, 100000]"),
    ({"geometry": {"spatial_dims": "three"}}, "spatial_dims must be 2 or 3"),
])
def test_a_crafted_checkpoint_record_is_refused_in_one_line(tmp_path, scans, capsys, meta, message):
    brain = load_checkpoint(bundled_checkpoint("brain"))
    pipe = json.loads(brain.meta["pipeline"])
    if "pipeline_spacing" in meta:
        changed = {"pipeline": json.dumps({**pipe, "spacing": meta["pipeline_spacing"]})}
    elif "pipeline_text" in meta:
        changed = {"pipeline": meta["pipeline_text"]}
    else:
        changed = {"training_geometry": {**brain.meta["training_geometry"], **meta["geometry"]}}
    rc, err = predict(scans, brain_with(tmp_path, **changed), tmp_path / "p", capsys)
    assert rc == 2 and message in err and "hostile.pt" in err, err


@pytest.mark.parametrize(("affine", "message"), [
    (np.zeros((4, 4)), "is degenerate"),
    (np.diag([1.5, 1.5, np.nan, 1.0]), "holds NaN or infinite values"),
    (np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "axes along one line"),
])
def test_a_degenerate_affine_is_refused_naming_the_file(tmp_path, capsys, affine, message):
    (tmp_path / "s").mkdir()
    header = nib.Nifti1Header()  # the sform written as is, as a broken export would write it
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.float32)
    header["sform_code"], header["qform_code"] = 1, 0
    for axis, row in zip("xyz", affine[:3], strict=True):
        header[f"srow_{axis}"] = row
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), None, header=header), str(tmp_path / "s" / "bad.nii.gz"))
    rc, err = predict(tmp_path / "s", "brain", tmp_path / "p", capsys)
    assert rc == 2 and "bad.nii.gz" in err and message in err, err


def test_a_2d_nifti_meets_the_3d_pipeline_with_a_clear_line(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), str(tmp_path / "s" / "flat.nii.gz"))
    rc, err = predict(tmp_path / "s", "brain", tmp_path / "p", capsys)
    assert rc == 2 and "flat" in err and ("2D" in err or "dimension" in err), err


def test_writing_into_a_folder_that_holds_linked_inputs_is_refused_before_anything_is_written(tmp_path, scans,
                                                                                              capsys):
    cohort = tmp_path / "L"
    (cohort / "images").mkdir(parents=True)
    os.symlink(scans / "c0.nii.gz", cohort / "images" / "c0.nii.gz")  # the scan lives elsewhere
    rc, err = predict(cohort, "brain", cohort / "images", capsys)
    assert rc == 2 and "would overwrite the inputs" in err
    assert sorted(p.name for p in (cohort / "images").iterdir()) == ["c0.nii.gz"]  # no output marker
    assert main(["--quiet", "predict", str(cohort), "--model", "brain", "--out", str(tmp_path / "ok"),
                 "--device", "cpu", "--uncertainty", "none"]) == 0  # the cohort still reads


def test_tissue_statistics_of_unmeasurable_channels():
    constant = np.full((1, 6, 6, 6), 1e6, np.float32)
    out = normalise_channels(constant, clip=(0.5, 99.5), normalise="zscore", statistics="tissue")
    assert np.array_equal(out, np.zeros_like(out))  # not the raw 1e6
    air = np.full((1, 20, 20, 20), -1024.0, np.float32)  # a small object in air: 99.7 % one value
    air[0, :3, :3, :3] = np.arange(27, dtype=np.float32).reshape(3, 3, 3) * 10 + 40
    out = normalise_channels(air, clip=None, normalise="zscore", statistics="tissue")[0]
    obj = out[:3, :3, :3]
    assert abs(obj.mean()) < 1e-5 and abs(obj.std() - 1) < 1e-5  # the object is what is measured
    assert np.isfinite(out).all() and out.max() < 2


def test_command_line_slips(tmp_path, capsys):
    from napari_fairseg.data.manifest import merge_cohorts

    assert main(["--quiet", "sample", "brain", "--out", str(tmp_path / "b"), "--cases", "0"]) == 2
    assert "n_cases must be >= 2, got 0" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "manifest.csv").write_text("case_id,image\n")
    assert main(["--quiet", "sample", "fundus", "--out", str(tmp_path / "used")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an abbreviation of --nproc would pass through to torchrun unseen
        main(["predict", "x", "--model", "brain", "--out", "y", "--npr", "2"])
    assert "unrecognized arguments: --npr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one cohort"):
        merge_cohorts([], name="none")
