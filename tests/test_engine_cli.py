"""`fairseg train`, `fairseg predict` and the network-backed demo, end to end."""

import json

import nibabel as nib
import pandas as pd
import pytest
import torch

from napari_fairseg.cli import main
from napari_fairseg.data.manifest import write_manifest
from napari_fairseg.models import load_checkpoint


@pytest.fixture(scope="module")
def brain_manifest(tiny_brain, tmp_path_factory):
    return write_manifest(tiny_brain, tmp_path_factory.mktemp("m") / "manifest.csv")


def test_train_then_predict_from_the_command_line(tmp_path, brain_manifest, tiny_brain, capsys):
    rc = main(["--quiet", "train", str(brain_manifest), "--out", str(tmp_path / "m.pt"), "--epochs", "2",
               "--dropout", "0.1", "--device", "cpu", "--fairness", "groupdro", "--patch", "16,16,16"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Group 1" in out and "checkpoint:" in out
    ck = load_checkpoint(tmp_path / "m.pt")
    assert ck.config.patch_size == (16, 16, 16) and ck.config.dropout == 0.1
    assert json.loads(ck.meta["train_config"])["fairness"] == "groupdro"
    geo = ck.meta["training_geometry"]  # what prediction compares inputs with
    assert geo["n_cases"] == ck.meta["n_train"] and geo["channels"] == 1 and geo["spatial_dims"] == 3
    assert geo["spacing"] == {"median": [3.0] * 3, "min": [3.0] * 3, "max": [3.0] * 3}
    assert geo["size"]["median"] == [32, 32, 24] and geo["spacing_unit"] == "mm"
    lo, hi = geo["intensity"]["p1"][0], geo["intensity"]["p99"][0]
    assert 0 <= geo["intensity"]["p1_min"][0] <= lo < geo["intensity"]["mean"][0] < hi <= geo["intensity"]["p99_max"][0]
    assert list(pd.read_csv(tmp_path / "m.log.csv")["epoch"]) == [1, 2]

    rc = main(["--quiet", "predict", str(brain_manifest), "--model", str(tmp_path / "m.pt"), "--out",
               str(tmp_path / "pred"), "--uncertainty", "mc", "--passes", "3", "--split", "test", "--device", "cpu"])
    assert rc == 0
    test_ids = tiny_brain.cases.loc[tiny_brain.cases["split"] == "test", "case_id"].tolist()
    scores = pd.read_csv(tmp_path / "pred" / "scores.csv", keep_default_na=False)
    assert sorted(scores["case_id"]) == sorted(test_ids)
    assert set(scores["warnings"]) == {""}  # the cohort it was trained on: nothing to warn about
    for cid in test_ids:
        for name in ("entropy", "mutual_information", "probability", "roi"):
            img = nib.load(tmp_path / "pred" / "maps" / f"{cid}_{name}.nii.gz")
            assert img.shape == (32, 32, 24)  # aligned with the image: sliding-window output stitched back
    captured = capsys.readouterr()
    assert "most uncertain" in captured.out and "warning" not in captured.err


def test_cli_errors_are_one_line_messages(tmp_path, brain_manifest, capsys):
    rc = main(["predict", str(brain_manifest), "--model", "fundus", "--out", str(tmp_path / "p")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "fundus-unet2d.pt" in err and "another task" in err and "Traceback" not in err
    rc = main(["train", str(brain_manifest), "--out", str(tmp_path / "m.pt"), "--patch", "15,16,16"])
    assert rc == 2 and "multiple of 2" in capsys.readouterr().err
    if not torch.cuda.is_available():
        rc = main(["train", str(brain_manifest), "--out", str(tmp_path / "m.pt"), "--device", "cuda"])
        assert rc == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_demo_predicts_with_the_bundled_network(tmp_path, capsys):
    assert main(["--quiet", "demo", "--kind", "fundus", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "bundled unet checkpoint" in out and "most uncertain" in out
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    disc = summary["attributes"]["race"]["metrics"]["dice_disc"]
    assert disc["overall"] > 0.85  # a trained network, far above the atlas baseline
    assert (tmp_path / "audit" / "report.html").is_file()
    assert len(list((tmp_path / "predictions" / "maps").glob("*.npz"))) == 20


def test_train_spacing_resamples_every_case_and_is_stored_for_prediction(tmp_path, brain_manifest, capsys):
    from napari_fairseg.data.pipeline import pipeline_of

    model = tmp_path / "coarse.pt"
    assert main(["--quiet", "train", str(brain_manifest), "--out", str(model), "--epochs", "1", "--device", "cpu",
                 "--spacing", "4.5,4.5,6", "--patch", "8,8,8", "--fg-prob", "1"]) == 0
    ck = load_checkpoint(model)
    assert pipeline_of(ck).spacing == (4.5, 4.5, 6.0)  # the cases are at 3 mm: not the median
    assert json.loads(ck.meta["train_config"])["fg_crop_prob"] == 1.0
    rc = main(["--quiet", "predict", str(brain_manifest), "--model", str(model), "--out", str(tmp_path / "p"),
               "--split", "test", "--device", "cpu", "--uncertainty", "none"])
    assert rc == 0
    pred = next((tmp_path / "p").glob("*.nii.gz"))
    assert nib.load(str(pred)).shape == (32, 32, 24)  # back on the scan's 3 mm grid
    # a fine-tuned model keeps its checkpoint's pipeline: another spacing is refused, in one line
    assert main(["--quiet", "train", str(brain_manifest), "--out", str(tmp_path / "ft.pt"), "--epochs", "1",
                 "--device", "cpu", "--init", str(model), "--spacing", "3,3,3"]) == 2
    assert "keeps its checkpoint's ((4.5, 4.5, 6.0) mm)" in capsys.readouterr().err
    assert main(["--quiet", "train", str(brain_manifest), "--out", str(tmp_path / "bad.pt"), "--spacing", "0,1,1"]) == 2
    assert "spacing must be three voxel sizes > 0 mm" in capsys.readouterr().err


def test_audit_without_a_predictions_folder_and_train_without_validation_say_so(tmp_path, brain_manifest, capsys):
    assert main(["--quiet", "audit", str(brain_manifest), "--predictions", str(tmp_path / "none"),
                 "--out", str(tmp_path / "a")]) == 2
    assert "--predictions is not a folder (run fairseg predict first" in capsys.readouterr().err
    assert main(["--quiet", "train", str(brain_manifest), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
                 "--device", "cpu", "--val-fraction", "0", "--patch", "16,16,16"]) == 0
    assert "no validation cases (--val-fraction 0" in capsys.readouterr().out
