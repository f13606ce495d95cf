"""`fairseg audit` / `demo` end to end: files, schema, and numbers recomputed by hand from per_case.csv."""

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_fairseg.baseline import atlas_predictions_job
from napari_fairseg.cli import main
from napari_fairseg.data import open_cohort
from napari_fairseg.progress import run_job

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "fundus"


@pytest.fixture(scope="module")
def fundus_audit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    cohort = open_cohort(SAMPLE)
    run_job(atlas_predictions_job(cohort, tmp / "pred"))
    rc = main(["--quiet", "audit", str(SAMPLE), "--predictions", str(tmp / "pred"), "--attributes",
               "race,gender,age", "--out", str(tmp / "out"), "--n-boot", "4000", "--mamamia"])
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


def _hand_groups(per_case, attr):
    """The attribute as the documented groups, binned by hand (age: MAMA-MIA bins)."""
    if attr == "age":
        return pd.cut(per_case["age"], bins=[0, 40, 50, 60, 70, 200],
                      labels=["0-40", "41-50", "51-60", "61-70", "71+"]).astype(str)
    return per_case[attr].astype(str)


def test_summary_numbers_recompute_by_hand_from_per_case(fundus_audit):
    # An independent recomputation (pandas, statistics), not the package's own equity_summary.
    _, tmp = fundus_audit
    per_case = pd.read_csv(tmp / "out" / "per_case.csv")
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert per_case[["race", "gender", "age"]].notna().all().all()  # no unknowns in the sample
    for metric in ("dice_cup", "dice_rim", "iou_disc"):
        v = per_case[metric]
        overall = v.mean()
        var_total = 0.0
        for attr in ("race", "gender", "age"):
            means = v.groupby(_hand_groups(per_case, attr)).mean()
            s = summary["attributes"][attr]["metrics"][metric]
            delta = sum(abs(overall - m) for m in means)
            assert s["overall"] == pytest.approx(overall)
            assert s["delta"] == pytest.approx(delta) and s["es"] == pytest.approx(overall / (1 + delta))
            assert s["essp_std"] == pytest.approx(overall / (1 + statistics.stdev(means)))  # ddof 1 default
            assert s["gap"] == pytest.approx(means.max() - means.min())
            assert s["group_variance"] == pytest.approx(statistics.pvariance(means))
            assert s["worst_group"] == means.idxmin() and s["n_groups"] == len(means)
            assert (s["n"], s["n_unknown"]) == (60, 0)
            var_total += statistics.pvariance(means)
        assert summary["variance_fairness"][metric] == pytest.approx(-var_total)
    # the documented group effect: the atlas misses the larger cups of the Black group
    g = per_case.groupby("race")["dice_cup"].mean()
    assert g["Black"] < g["White"]


def test_group_table_csv_against_pandas_and_a_scipy_bootstrap(fundus_audit):
    from scipy.stats import bootstrap

    _, tmp = fundus_audit
    per_case = pd.read_csv(tmp / "out" / "per_case.csv")
    groups = pd.read_csv(tmp / "out" / "groups.csv", keep_default_na=False, na_values=[""])
    for attr in ("race", "gender", "age"):
        for metric in ("dice_cup", "dice_rim"):
            rows = groups[(groups["attribute"] == attr) & (groups["metric"] == metric)].set_index("group")
            by = per_case[metric].groupby(_hand_groups(per_case, attr))
            assert sorted(rows.index) == sorted(by.groups)
            for name, x in by:
                r = rows.loc[name]
                assert r["n"] == len(x) and r["mean"] == pytest.approx(x.mean())
                if len(x) > 1:
                    assert r["std"] == pytest.approx(statistics.stdev(x))  # sample std (ddof 1)
                else:
                    assert np.isnan(r["std"]) and r["ci_low"] == r["ci_high"] == x.iloc[0]
                assert bool(r["small"]) == (len(x) < 10)  # --min-group-size default
                if len(x) < 5:
                    continue
                # README: CI = 95 % percentile bootstrap. Both sides are Monte Carlo (4,000 and
                # 20,000 resamples): they agree to ~2-3 % of the half-width; a 90 % CI is ~16 % narrower.
                ci = bootstrap((x.to_numpy(),), np.mean, method="percentile", n_resamples=20000,
                               random_state=np.random.default_rng(1)).confidence_interval
                tol = 0.08 * (ci.high - ci.low) / 2
                assert abs(r["ci_low"] - ci.low) < tol and abs(r["ci_high"] - ci.high) < tol, (attr, metric, name)


def test_audit_job_reports_each_stage_in_order(fundus_audit):
    from napari_fairseg.report.audit import AuditConfig, audit_job

    cohort, tmp = fundus_audit
    seen = []
    config = AuditConfig(attributes=("race", "gender"), split="test", hd_mode="none", n_boot=10)
    audit = run_job(audit_job(cohort, tmp / "pred", config), on_progress=seen.append)
    n = int((cohort.cases["split"] == "test").sum())
    dice = [m for m in audit.metrics if m.startswith("dice_")]
    assert [(p.stage, p.done, p.total, p.message) for p in seen] == (
        [("metrics", i + 1, n, cid) for i, cid in enumerate(audit.per_case["case_id"])]
        + [("groups", 1, 2, "race"), ("groups", 2, 2, "gender")]
        + [("subgroups", k + 1, len(dice), mc) for k, mc in enumerate(dice)]
        + [("done", 1, 1, "audit complete")])
    assert len(dice) == len(cohort.classes) and n > 0


def test_audit_errors_name_the_missing_prediction(fundus_audit, tmp_path, capsys):
    _, tmp = fundus_audit
    shutil.copytree(tmp / "pred", tmp_path / "pred")
    (tmp_path / "pred" / "data_00007.npz").unlink()
    rc = main(["--quiet", "audit", str(SAMPLE), "--predictions", str(tmp_path / "pred"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "data_00007.npz" in err and "no prediction" in err and "(--split test)" in err
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
