"""The breast sample in the MAMA-MIA layout: the MAMA-MIA reader opens it with its geometry
(non-RAS cases included), the breast box holds the lesion, the documented density effect is
measured on the images, and `fairseg audit` reports the MAMA-MIA scores on it."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from napari_fairseg.cli import main
from napari_fairseg.data import load_case, open_cohort
from napari_fairseg.data.arrays import save_label
from napari_fairseg.data.readers import breast_info_path, read_breast_box
from napari_fairseg.data.synthetic import (
    BREAST_SITES,
    FGT_FRACTION,
    LESION_ENHANCEMENT,
    SAMPLE_FOLDERS,
    breast_case,
    breast_cohort_job,
    make_sample,
    sample_cohort,
)
from napari_fairseg.errors import InputDataError

SHAPE = (32, 32, 12)
SPACING = (0.7, 0.7, 1.5)


@pytest.fixture(scope="module")
def breast(tmp_path_factory):
    """Six tiny cases: two per site (RAS, LPS, permuted P-S-L), densities a, b, b, c, c, d."""
    return make_sample("breast", tmp_path_factory.mktemp("breast") / "mm", n_cases=6, seed=2, shape=SHAPE,
                       spacing=SPACING)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the reader
def test_the_sample_opens_as_mamamia_with_three_phases_metadata_and_splits(breast):
    root = breast.source
    cohort = open_cohort(root)  # detected, not forced
    assert cohort.kind == "mamamia" and len(cohort) == 6
    assert all(cid == cid.lower() for cid in cohort.case_ids)
    sheet = pd.read_excel(root / "clinical_and_imaging_info.xlsx", sheet_name="dataset_info")
    assert list(sheet.columns) == ["patient_id", "dataset", "age", "menopause", "breast_density", "ethnicity"]
    assert (sheet["patient_id"] == sheet["patient_id"].str.upper()).all()  # joined ignoring case:
    c = cohort.cases.set_index("case_id")
    assert c["breast_density"].notna().all() and c["age"].notna().all() and c["dataset"].notna().all()
    assert sorted(c["breast_density"]) == ["a", "b", "b", "c", "c", "d"]
    assert set(c["dataset"]) == set(BREAST_SITES) and set(c["split"]) == {"train", "test"}
    splits = pd.read_csv(root / "train_test_splits.csv")
    assert sorted(splits["test_split"].dropna()) == sorted(c.index[c["split"] == "test"])
    assert set(c["menopausal_status"]) <= {"pre", "post", "unknown"} and "age_group" in c
    for cid in cohort.case_ids:
        case = load_case(cohort, cid)
        stored = nib.load(root / "images" / cid / f"{cid}_0000.nii.gz")
        assert case.image.shape == (3, *stored.shape) and case.label.shape == stored.shape
        assert case.label.any() and set(np.unique(case.label)) == {0, 1}
        assert stored.get_data_dtype() == np.int16


def test_affines_are_kept_and_non_ras_cases_show_the_same_anatomy(breast):
    seen = set()
    for cid in breast.case_ids:
        case = load_case(breast, cid)
        for ph in range(3):
            np.testing.assert_array_equal(
                case.affine, nib.load(breast.source / "images" / cid / f"{cid}_000{ph}.nii.gz").affine)
        codes = "".join(nib.aff2axcodes(case.affine))
        seen.add(codes)
        # reoriented to RAS with the file's own affine, every case is the same grid …
        canon = nib.as_closest_canonical(nib.Nifti1Image(case.label.astype(np.uint8), case.affine))
        assert canon.shape == SHAPE, codes
        np.testing.assert_allclose(canon.header.get_zooms(), SPACING, rtol=1e-5)
        # … holding the scene the generator made on its RAS grid, whatever the storage order
        density = breast.row(cid)["breast_density"]
        i = int(cid.rsplit("_", 1)[1])  # the case number the generator drew it with
        phases, label, _, _ = breast_case(np.random.default_rng([2, i, 1]), shape=SHAPE, density=density)
        np.testing.assert_array_equal(np.asarray(canon.dataobj), label, err_msg=f"{cid} {codes}")
        pre = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(case.image[0], case.affine)).dataobj)
        assert np.corrcoef(pre.ravel(), phases[0].ravel())[0, 1] > 0.999, (cid, codes)  # up to the gain
    assert seen == {"RAS", "LPS", "PSL"}


def test_the_breast_box_lies_inside_the_image_and_holds_the_lesion(breast):
    for cid in breast.case_ids:
        case = load_case(breast, cid)
        path = breast_info_path(breast, cid)
        coords = json.loads(path.read_text())["primary_lesion"]["breast_coordinates"]
        assert sorted(coords) == sorted(["x_min", "x_max", "y_min", "y_max", "z_min", "z_max"])
        box = read_breast_box(path, shape=case.label.shape)
        inside = np.zeros(case.label.shape, bool)
        inside[box] = True
        assert case.label[~inside].sum() == 0 and case.label[inside].sum() > 0, cid
        assert inside.mean() < 0.8, cid  # a box, not the whole image
        # MAMA-MIA's x indexes nibabel's last axis (SimpleITK's array order is reversed)
        assert box[2] == slice(coords["x_min"], coords["x_max"])


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("{not json", "not a readable JSON"),
    ({"primary_lesion": {}}, "no primary_lesion.breast_coordinates"),
    ({"primary_lesion": {"breast_coordinates": {"x_min": 1, "x_max": 5}}}, "lacks"),
    ({"primary_lesion": {"breast_coordinates": dict.fromkeys(["x_min", "y_min", "z_min"], 0)
                         | {"x_max": 4, "y_max": "8", "z_max": 4}}}, "y_max is '8'"),
    ({"primary_lesion": {"breast_coordinates": dict.fromkeys(["x_min", "y_min", "z_min"], 0)
                         | {"x_max": 4, "y_max": 8, "z_max": 40}}}, "z_min..z_max = 0..40"),
])
def test_a_bad_breast_box_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputDataError, match=message) as err:
        read_breast_box(path, shape=(10, 10, 10))
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- generation
def test_generation_is_deterministic_and_a_cancelled_run_leaves_only_whole_cases(tmp_path):
    kw = dict(n_cases=3, seed=4, shape=(24, 24, 8))
    make_sample("breast", tmp_path / "a", **kw)
    make_sample("breast", tmp_path / "b", **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    images = {k: v for k, v in a.items() if k.endswith((".nii.gz", ".json", ".csv"))}
    assert len(images) == 3 * 5 + 1 and all(b[k] == v for k, v in images.items())
    other = _files(make_sample("breast", tmp_path / "c", **{**kw, "seed": 5}).source)
    assert other["images/sima_000/sima_000_0000.nii.gz"] != a["images/sima_000/sima_000_0000.nii.gz"]

    job = breast_cohort_job(tmp_path / "d", **kw)
    assert next(job).done == 1  # one case written …
    job.close()  # … then Cancel
    root = tmp_path / "d"
    assert [p.name for p in (root / "images").iterdir()] == ["sima_000"]
    assert sorted(p.name for p in (root / "images" / "sima_000").iterdir()) == [
        f"sima_000_000{ph}.nii.gz" for ph in range(3)]
    assert not (root / ".partial").exists() and not (root / "clinical_and_imaging_info.xlsx").exists()
    cohort = open_cohort(root)  # the whole case reads; no clinical table yet is said
    assert cohort.case_ids == ["sima_000"] and any("no clinical table" in n for n in cohort.notes)


def _measures(cohort) -> pd.DataFrame:
    """Per case, from the images alone: the FGT share of the breast tissue in front of the
    chest wall (pre-contrast), and the lesion's contrast to the tissue around it in the first
    post-contrast phase, relative to that tissue before contrast."""
    rows = []
    for cid in cohort.case_ids:
        case = load_case(cohort, cid)
        pre, post = case.image[0], case.image[1]
        box = read_breast_box(breast_info_path(cohort, cid), shape=case.label.shape)
        # tissue of the box (skin eroded away) in its anterior half (world y): breast tissue only
        idx = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"))
        wy = np.tensordot(case.affine[1, :3], idx, axes=(0, 0))
        values = pre[box]
        core = ndimage.binary_erosion(values > 0.25 * np.percentile(values, 99.5)) & (wy > (wy.min() + wy.max()) / 2)
        tissue = values[core]
        fgt = np.percentile(tissue, 97)  # FGT is the breast's brightest tissue before contrast
        lesion = case.label.astype(bool)
        shell = ndimage.binary_dilation(lesion, iterations=2) & ~lesion & (pre > 0.25 * np.percentile(pre, 99.5))
        rows.append({"case_id": cid, "fgt_share": float((tissue > 0.72 * fgt).mean()),  # above (fat + FGT) / 2
                     "contrast": float((post[lesion].mean() - post[shell].mean()) / pre[shell].mean()),
                     "enhancement": float(post[lesion].mean() / pre[lesion].mean())})
    return cohort.cases.merge(pd.DataFrame(rows), on="case_id")


def test_denser_breasts_hold_more_fgt_and_show_their_lesion_with_less_contrast(tmp_path):
    # Module docstring: FGT share a 10 %, b 35 %, c 60 %, d 82 %; lesion wash-in falls and
    # parenchymal enhancement rises with density. Measured on a fresh 16-case cohort (seed 1,
    # 96×96×24, 2/6/6/2 cases a–d): FGT share a 0.13, b 0.44, c 0.74, d 0.93 (the anterior half,
    # where FGT gathers, reads higher than the whole breast); lesion contrast a 2.8, b 1.5, c 0.83,
    # d 0.16.
    t = _measures(make_sample("breast", tmp_path / "m", n_cases=16, seed=1, shape=(96, 96, 24)))
    by = t.groupby("breast_density")[["fgt_share", "contrast", "enhancement"]].mean()
    assert list(by.index) == ["a", "b", "c", "d"]
    assert by["fgt_share"].is_monotonic_increasing and by["contrast"].is_monotonic_decreasing, by
    for d, share in FGT_FRACTION.items():
        assert share - 0.05 < by.loc[d, "fgt_share"] < share + 0.18, by
    assert by.loc["a", "contrast"] > 4 * by.loc["d", "contrast"] > 0, by
    assert (t["enhancement"] > 1.2).all()  # every lesion enhances after contrast
    assert LESION_ENHANCEMENT["a"] > LESION_ENHANCEMENT["d"]


# --------------------------------------------------------------------------- the user's doors
def test_fairseg_sample_breast_writes_a_cohort_the_reader_opens(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["--quiet", "sample", "breast", "--out", str(out), "--cases", "3", "--shape", "24,24,8",
                 "--spacing", "1,1,2"]) == 0
    assert "wrote 3 breast cases" in capsys.readouterr().out
    cohort = open_cohort(out)
    assert cohort.kind == "mamamia" and load_case(cohort, cohort.case_ids[0]).spacing == (1.0, 1.0, 2.0)
    assert main(["--quiet", "sample", "brain", "--out", str(tmp_path / "b"), "--shape", "8,8,8"]) == 2
    assert "options of the breast sample" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["--quiet", "sample", "breast", "--out", str(tmp_path / "x"), "--shape", "24,24"]) == 2
    assert "shape must be three sizes" in capsys.readouterr().err


def test_sample_cohort_breast_opens_the_cached_sample_without_regenerating_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRSEG_CACHE", str(tmp_path))
    where = tmp_path / SAMPLE_FOLDERS["breast"]
    make_sample("breast", where, n_cases=2, seed=0, shape=(16, 16, 6))  # a stand-in for the full-size sample
    before = _files(where)
    cohort = sample_cohort("breast")
    assert cohort.kind == "mamamia" and Path(cohort.source) == where and len(cohort) == 2
    assert _files(where) == before


def test_fairseg_audit_reports_the_mamamia_scores_of_predictions_on_the_sample(breast, tmp_path, capsys):
    root = breast.source
    before = _files(root)
    pred = tmp_path / "pred"
    for k, cid in enumerate(breast.case_ids):  # exact, empty, and dilated predictions
        case = load_case(breast, cid)
        label = case.label.astype(bool)
        p = label if k == 0 else np.zeros_like(label) if k == 1 else ndimage.binary_dilation(label, iterations=k % 3)
        save_label(breast, pred / f"{cid}.nii.gz", p.astype(np.uint8), like=case)  # the case's (non-RAS) affine
    out = tmp_path / "audit"
    rc = main(["--quiet", "audit", str(root), "--predictions", str(pred), "--out", str(out), "--hd", "voxel",
               "--attributes", "age,menopausal_status,breast_density", "--n-boot", "10", "--min-group-size", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert _files(root) == before  # the cohort is untouched
    per_case = pd.read_csv(out / "per_case.csv")
    assert len(per_case) == 6 and per_case.loc[per_case["case_id"] == breast.case_ids[0], "dice_foreground"].item() == 1
    # MAMA-MIA scores recomputed by hand (official age bins, groups ignoring missing values)
    per_case["age_bin"] = pd.cut(per_case["age"], [0, 40, 50, 60, 70, 200], labels=False)
    dsc, nhd = per_case["dice_foreground"], per_case["normhd_foreground"]
    ps = 0.5 * (dsc.mean() + 1 - nhd.mean())
    fs = np.mean([1 - 0.5 * (np.ptp(dsc.groupby(per_case[v]).mean()) + np.ptp(nhd.groupby(per_case[v]).mean()))
                  for v in ("age_bin", "menopausal_status", "breast_density")])
    scores = json.loads((out / "summary.json").read_text())["mamamia"]["foreground"]
    assert scores["performance"] == pytest.approx(ps) and scores["fairness"] == pytest.approx(fs)
    assert scores["total"] == pytest.approx(0.5 * ps + 0.5 * fs)
    assert f"PS {ps:.4f}  FS {fs:.4f}  TS {0.5 * ps + 0.5 * fs:.4f}" in printed
    assert "MAMA-MIA scores" in (out / "report.html").read_text()
