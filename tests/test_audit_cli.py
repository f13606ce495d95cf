"""`fairseg audit` / `demo` end to end: files, schema, and numbers recomputed from per_case.csv."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_fairseg.baseline import atlas_predictions_job
from napari_fairseg.cli import main
from napari_fairseg.data import open_cohort
from napari_fairseg.data.attributes import bin_continuous
from napari_fairseg.metrics import equity_summary
from napari_fairseg.progress import run_job

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "fundus"


@pytest.fixture(scope="module")
def fundus_audit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    cohort = open_cohort(SAMPLE)
    run_job(atlas_predictions_job(cohort, tmp / "pred"))
    rc = main(["--quiet", "audit", str(SAMPLE), "--predictions", str(tmp / "pred"), "--attributes",
               "race,gender,age", "--out", str(tmp / "out"), "--n-boot", "200", "--mamamia"])
    assert rc == 0
    return cohort, tmp


def test_audit_writes_every_file_with_the_documented_schema(fundus_audit):
    _, tmp = fundus_audit
    out = tmp / "out"
    for name in ("per_case.csv", "groups.csv", "subgroups.csv", "summary.json", "report.html",
                 "heatmap_race_x_gender.png", "heatmap_race_x_age.png", "heatmap_gender_x_age.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    per_case = pd.read_csv(out / "per_case.csv")
    assert len(per_case) == 60
    assert {"dice_cup", "dice_rim", "dice_disc", "iou_cup", "hd95_cup", "normhd_cup"} <= set(per_case.columns)
    groups = pd.read_csv(out / "groups.csv")
    assert list(groups.columns) == ["attribute", "metric", "group", "known", "n", "n_nan", "mean", "std",
                                    "ci_low", "ci_high", "small"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"cohort", "classes", "n_cases", "config", "overall", "attributes",
                            "variance_fairness", "worst_subgroups", "mamamia"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Most divergent subgroups" in html


def test_summary_numbers_recompute_from_per_case(fundus_audit):
    _, tmp = fundus_audit
    per_case = pd.read_csv(tmp / "out" / "per_case.csv")
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    for attr in ("race", "gender", "age"):
        groups = bin_continuous(per_case[attr], name=attr)
        e = equity_summary(per_case["dice_cup"].to_numpy(), groups)
        s = summary["attributes"][attr]["metrics"]["dice_cup"]
        assert s["overall"] == pytest.approx(per_case["dice_cup"].mean())
        assert s["delta"] == pytest.approx(e["delta"]) and s["es"] == pytest.approx(e["es"])
    # the documented group effect: the atlas misses the larger cups of the Black group
    g = per_case.groupby("race")["dice_cup"].mean()
    assert g["Black"] < g["White"]


def test_audit_errors_name_the_missing_prediction(fundus_audit, tmp_path, capsys):
    _, tmp = fundus_audit
    shutil.copytree(tmp / "pred", tmp_path / "pred")
    (tmp_path / "pred" / "data_00007.npz").unlink()
    rc = main(["--quiet", "audit", str(SAMPLE), "--predictions", str(tmp_path / "pred"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "data_00007.npz" in err and "no prediction" in err
    rc = main(["--quiet", "audit", str(SAMPLE), "--predictions", str(tmp / "pred"), "--attributes", "shoe_size",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown attribute" in capsys.readouterr().err


def test_nifti_predictions_keep_the_source_affine(tmp_path):
    import nibabel as nib

    from napari_fairseg.data.synthetic import make_sample

    cohort = make_sample("brain", tmp_path / "b", n_cases=4, seed=3, shape=(24, 24, 16), spacing=2.0)
    run_job(atlas_predictions_job(cohort, tmp_path / "p"))
    src = nib.load(cohort.row("brain_000")["image"])
    pred = nib.load(tmp_path / "p" / "brain_000.nii.gz")
    np.testing.assert_allclose(pred.affine, src.affine)
    rc = main(["--quiet", "audit", str(tmp_path / "b" / "manifest.csv"), "--predictions", str(tmp_path / "p"),
               "--out", str(tmp_path / "o"), "--attributes", "group,sex", "--n-boot", "50"])
    assert rc == 0
    per_case = pd.read_csv(tmp_path / "o" / "per_case.csv")
    assert per_case["hd95_caudate"].gt(0).all() and per_case["dice_caudate"].between(0, 1).all()
