"""Every reader on hand-made files, and every bad input with its clear error."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_fairseg.data import load_case, open_cohort, read_manifest, write_manifest
from napari_fairseg.data.attributes import (
    age_in_years,
    bin_continuous,
    decode_fairseg_code,
    detect_race_coding,
    mamamia_age_group,
    normalise_menopause,
)
from napari_fairseg.errors import InputDataError

from .conftest import save_nifti

AFF = np.diag([0.8, 0.8, 2.0, 1.0])


def make_nifti_folder(root, ids=("c1", "c2", "c3"), layout="split"):
    for i, cid in enumerate(ids):
        img = np.random.default_rng(i).random((8, 9, 5)).astype(np.float32)
        lab = (img > 0.5).astype(np.uint8)
        if layout == "split":
            save_nifti(root / "images" / f"{cid}.nii.gz", img, AFF)
            save_nifti(root / "labels" / f"{cid}.nii.gz", lab, AFF)
        else:
            save_nifti(root / f"{cid}.nii.gz", img, AFF)
            save_nifti(root / f"{cid}_seg.nii.gz", lab, AFF)
    return root


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_nifti_folder_keeps_affine_and_joins_metadata_ignoring_case(tmp_path, layout):
    root = make_nifti_folder(tmp_path / "ds", layout=layout)
    pd.DataFrame({"Case_ID": ["C1", "c2", "zz"], "sex": ["F", "M", "F"]}).to_csv(root / "metadata.csv", index=False)
    cohort = open_cohort(root)
    assert cohort.kind == "nifti" and cohort.attributes == ["sex"]
    sex = cohort.cases.set_index("case_id")["sex"]
    assert (sex["c1"], sex["c2"]) == ("F", "M") and pd.isna(sex["c3"])
    assert any("no metadata row" in n and "c3" in n for n in cohort.notes)
    assert any("no image" in n and "zz" in n for n in cohort.notes)
    case = load_case(cohort, "c1")
    assert case.image.shape == (1, 8, 9, 5) and case.label.shape == (8, 9, 5)
    np.testing.assert_allclose(case.affine, AFF)
    assert case.spacing == pytest.approx((0.8, 0.8, 2.0))
    with pytest.raises(InputDataError, match="no image"):
        open_cohort(root, strict=True)


def test_xlsx_metadata_and_manifest_round_trip(tmp_path):
    root = make_nifti_folder(tmp_path / "ds")
    pd.DataFrame({"id": ["c1", "c2", "c3"], "age": [30, 50, 70]}).to_excel(tmp_path / "meta.xlsx", index=False)
    cohort = open_cohort(root, metadata=tmp_path / "meta.xlsx")
    out = write_manifest(cohort, root / "manifest.csv")
    assert out.read_text().splitlines()[1].startswith("c1,images/c1.nii.gz,labels/c1.nii.gz,")  # relative
    back = read_manifest(out)
    assert back.case_ids == cohort.case_ids and back.kind == "nifti"
    np.testing.assert_array_equal(load_case(back, "c2").label, load_case(cohort, "c2").label)
    assert json.loads((root / "manifest.cohort.json").read_text())["attributes"] == ["age"]


def test_image2d_folder_binarises_255_masks(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    img = (np.random.default_rng(0).random((16, 20, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    mask = np.zeros((16, 20), np.uint8)
    mask[4:8, 4:9] = 255
    Image.fromarray(mask).save(tmp_path / "labels" / "a.png")
    cohort = open_cohort(tmp_path)
    case = load_case(cohort, "a")
    assert cohort.kind == "image2d" and case.image.shape == (3, 16, 20)
    assert case.label.sum() == 20 and set(np.unique(case.label)) == {0, 1}


def fairseg_file(path, schema="readme", race=0, age=60.0, ethnicity=0, mask=None, **extra):
    img_key, mask_key = ("slo_fundus", "disc_cup_mask") if schema == "readme" else ("fundus_slo", "disc_cup")
    eth_key = "ethnicity" if schema == "readme" else "hispanic"
    if mask is None:
        mask = np.zeros((12, 12), np.int8)
        mask[3:9, 3:9] = -1
        mask[5:7, 5:7] = -2
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{img_key: np.full((12, 12), 100, np.uint8), mask_key: mask, "race": race, "age": age,
                      eth_key: ethnicity, "gender": 1, "language": 0, "maritalstatus": -1, "pid": "P1", **extra})


@pytest.mark.parametrize("schema", ["readme", "code"])
def test_fairseg_both_key_schemas_codes_and_unknowns(tmp_path, schema):
    fairseg_file(tmp_path / "Training" / "data_00001.npz", schema, race=2, ethnicity=-1)
    fairseg_file(tmp_path / "Test" / "data_00002.npz", schema, race=1, ethnicity=1)
    cohort = open_cohort(tmp_path)
    c = cohort.cases.set_index("case_id")
    assert cohort.kind == "fairseg"
    assert c.loc["data_00001", "race"] == "White" and pd.isna(c.loc["data_00001", "ethnicity"])
    assert c.loc["data_00002", "ethnicity"] == "Hispanic" and c.loc["data_00002", "gender"] == "Male"
    assert c["split"].tolist() == ["train", "test"]
    assert "pid" not in cohort.attributes and "maritalstatus" in cohort.attributes
    case = load_case(cohort, "data_00001")
    assert case.label[5, 5] == 2 and case.label[3, 3] == 1 and case.label[0, 0] == 0  # cup / rim codes mapped
    assert cohort.classes == {"cup": (2,), "rim": (1,), "disc": (1, 2)}


def test_fairseg_raw_race_codes_age_in_days_and_split_lists(tmp_path):
    fairseg_file(tmp_path / "data_00001.npz", race=7, age=365.25 * 70)
    fairseg_file(tmp_path / "data_00002.npz", race=3, age=365.25 * 50)
    (tmp_path / "train.txt").write_text("data_00001.npz\n")
    (tmp_path / "test.txt").write_text("data_00002.npz\n")
    cohort = open_cohort(tmp_path)
    c = cohort.cases.set_index("case_id")
    assert c["race"].tolist() == ["White", "Black"]
    assert c["age"].tolist() == pytest.approx([70, 50])
    assert c["split"].tolist() == ["train", "test"]
    assert any("days" in n for n in cohort.notes) and any("raw" in n for n in cohort.notes)


def test_fairseg_unknown_code_names_file_and_value(tmp_path):
    fairseg_file(tmp_path / "data_00001.npz", race=0)
    np.savez(tmp_path / "data_00002.npz", slo_fundus=np.zeros((4, 4)), disc_cup_mask=np.zeros((4, 4)), race=0, gender=5)
    with pytest.raises(InputDataError, match=r"data_00002\.npz.*'gender' has unknown code 5"):
        open_cohort(tmp_path)


#: The Harvard-FairSeg README's code tables, written out (not read from the package).
README_CODES = {
    "gender": {0: "Female", 1: "Male"},
    "race": {0: "Asian", 1: "Black", 2: "White"},
    "ethnicity": {0: "Non-Hispanic", 1: "Hispanic"},
    "language": {0: "English", 1: "Spanish", 2: "Other"},
    "maritalstatus": {0: "Married/Partnered", 1: "Single", 2: "Divorced", 3: "Widowed", 4: "Legally separated"},
}


@pytest.mark.parametrize("attribute", list(README_CODES))
def test_every_readme_code_decodes_to_its_label_and_minus_one_is_unknown(attribute):
    for code, label in README_CODES[attribute].items():
        assert decode_fairseg_code(attribute, code, source="f.npz") == label
        assert decode_fairseg_code(attribute, float(code), source="f.npz") == label  # 1.0 is code 1
        assert decode_fairseg_code(attribute, np.int8(code), source="f.npz") == label  # as npz stores it
    assert decode_fairseg_code(attribute, -1, source="f.npz") is None
    bad = max(README_CODES[attribute]) + 1
    with pytest.raises(InputDataError, match=rf"f\.npz.*'{attribute}' has unknown code {bad} \(expected -1=unknown, 0="):
        decode_fairseg_code(attribute, bad, source="f.npz")
    with pytest.raises(InputDataError, match=rf"'{attribute}' has a non-integer code 1.5"):
        decode_fairseg_code(attribute, 1.5, source="f.npz")


def test_raw_race_codes_2_3_7_decode_and_the_coding_is_detected():
    raw = {2: "Asian", 3: "Black", 7: "White", -1: None}
    assert {c: decode_fairseg_code("race", c, source="f", race_coding="raw") for c in raw} == raw
    with pytest.raises(InputDataError, match="unknown code 0"):
        decode_fairseg_code("race", 0, source="f", race_coding="raw")
    for codes, coding in (({0, 1, 2}, "readme"), ({2}, "readme"), ({0, -1}, "readme"), ({-1}, "readme"),
                          ({2, 3}, "raw"), ({7}, "raw"), ({2, 3, 7, -1}, "raw")):
        assert detect_race_coding(codes) == coding, codes
    for codes, bad in (({0, 3}, r"\[0\]"), ({1, 7}, r"\[1\]"), ({3, 5, 7}, r"\[5\]")):
        with pytest.raises(InputDataError, match=rf"race codes {bad} fit neither the README coding"):
            detect_race_coding(codes)


@pytest.mark.parametrize(("races", "coding", "labels"), [
    ([0, 1, 2, -1], "README {0,1,2}", ["Asian", "Black", "White", None]),
    ([2, 3, 7, -1], "raw {2,3,7}", ["Asian", "Black", "White", None]),  # code 2 is Asian here, White above
])
def test_a_fairseg_folder_decodes_every_attribute_by_its_detected_race_coding(tmp_path, races, coding, labels):
    for i, race in enumerate(races):
        fairseg_file(tmp_path / f"data_{i:05d}.npz", race=race, age=[45.0, 61.5, -1.0, 80.0][i], ethnicity=[0, 1, -1, 0][i],
                     gender=[0, 1, -1, 0][i], language=[0, 1, 2, -1][i], maritalstatus=[0, 2, 3, 4][i])
    cohort = open_cohort(tmp_path)
    c = cohort.cases.set_index("case_id").astype(object).where(lambda t: t.notna(), None)
    assert c["race"].tolist() == labels
    assert c["gender"].tolist() == ["Female", "Male", None, "Female"]
    assert c["ethnicity"].tolist() == ["Non-Hispanic", "Hispanic", None, "Non-Hispanic"]
    assert c["language"].tolist() == ["English", "Spanish", "Other", None]
    assert c["maritalstatus"].tolist() == ["Married/Partnered", "Divorced", "Widowed", "Legally separated"]
    assert c["age"].tolist() == [45.0, 61.5, None, 80.0]  # years stay years; -1 is unknown
    assert f"race coding: {coding}" in cohort.notes and "age stored in years" in cohort.notes


def test_fairseg_age_in_days_becomes_years_and_minus_one_stays_unknown(tmp_path):
    for i, days in enumerate([365.25 * 40, 365.25 * 71.5, -1, 18262]):
        fairseg_file(tmp_path / f"data_{i:05d}.npz", race=0, age=days)
    cohort = open_cohort(tmp_path)
    ages = cohort.cases["age"].tolist()
    assert ages[:2] == [40.0, 71.5] and np.isnan(ages[2]) and ages[3] == 50.0  # 18262 d = 49.999 y, 2 decimals
    assert "age stored in days, converted to years" in cohort.notes
    years, unit = age_in_years(np.array([150.0, 20.0, 150.0]))
    assert unit == "years" and years.tolist() == [150.0, 20.0, 150.0]  # a median of 150 can still be years
    days, unit = age_in_years(np.array([np.nan, 150.5, 21915.0]))
    assert unit == "days" and days[1:].tolist() == pytest.approx([150.5 / 365.25, 60.0]) and np.isnan(days[0])


def test_mamamia_age_bins_and_menopause_normalisation_by_hand():
    ages = pd.Series([0.5, 40, 40.01, 50, 50.5, 60, 60.5, 70, 70.5, 100, 101, -1, None])
    expected = ["0-40", "0-40", "41-50", "41-50", "51-60", "51-60", "61-70", "61-70", "71+", "71+", "71+", None, None]
    got = mamamia_age_group(ages)
    assert got.astype(object).where(got.notna(), None).tolist() == expected  # upper edges belong to the lower bin
    assert bin_continuous(ages, name="Age").equals(got)  # any numeric age gets the official bins
    status = pd.Series(["peri", "perimenopausal", "pre", "premenopausal", "post", "postmenopausal", "pre/post",
                        None, np.nan, "unknown", "other", "Post"])
    assert normalise_menopause(status).tolist() == [
        "pre", "pre", "pre", "pre", "post", "post", "post", "unknown", "unknown", "unknown", "other",
        "Post"]  # case-sensitive, as the official scorer is


def test_fairdomain_reads_slo_or_oct(tmp_path):
    m = np.zeros((6, 6), np.int8)
    m[1:5, 1:5] = -1
    for i in range(2):
        np.savez(tmp_path / f"data_{i}.npz", fundus_slo=np.zeros((6, 6)), slo_disc_cup=m,
                 fundus_oct=np.ones((6, 6)), oct_disc_cup=m, race=0)
    slo = open_cohort(tmp_path)
    oct_ = open_cohort(tmp_path, modality="oct")
    assert slo.kind == oct_.kind == "fairdomain"
    assert load_case(slo, "data_0").image.shape == (1, 6, 6)
    assert load_case(oct_, "data_0").image.mean() == 1.0 and load_case(oct_, "data_0").label.sum() == 16


def make_mamamia(root):
    ids = ["duke_001", "duke_002", "ispy1_1001"]
    for i, pid in enumerate(ids):
        for ph in range(3):
            save_nifti(root / "images" / pid / f"{pid}_000{ph}.nii.gz", np.full((6, 6, 4), ph + i, np.float32), AFF)
        seg = np.zeros((6, 6, 4), np.uint8)
        seg[2:4, 2:4, 1:3] = 1
        save_nifti(root / "segmentations" / "expert" / f"{pid}.nii.gz", seg, AFF)
    (root / "patient_info_files").mkdir()
    pd.DataFrame({"train_split": ["DUKE_001", "DUKE_002"], "test_split": ["ISPY1_1001", None]}).to_csv(
        root / "train_test_splits.csv", index=False)
    pd.DataFrame({"patient_id": ["DUKE_001", "DUKE_002", "ISPY1_1001", "NACT_01"], "age": [38, 55, 71, 60],
                  "menopause": ["peri", None, "postmenopausal", "pre"], "breast_density": ["a", "b", None, "c"],
                  "dataset": ["DUKE", "DUKE", "ISPY1", "NACT"]}).to_excel(
        root / "clinical_and_imaging_info.xlsx", sheet_name="dataset_info", index=False)
    return root


def test_mamamia_tree(tmp_path):
    cohort = open_cohort(make_mamamia(tmp_path / "mm"))
    c = cohort.cases.set_index("case_id")
    assert cohort.kind == "mamamia"
    assert c["split"].tolist() == ["train", "train", "test"]
    assert c["menopausal_status"].tolist() == ["pre", "unknown", "post"]
    assert c["age_group"].tolist() == ["0-40", "51-60", "71+"]
    assert any("NACT_01" in n for n in cohort.notes)  # metadata row without images is reported
    case = load_case(cohort, "duke_002")
    assert case.image.shape == (3, 6, 6, 4) and case.image[2, 0, 0, 0] == 3.0  # phases as channels
    with pytest.raises(InputDataError, match="lack requested phases"):
        open_cohort(tmp_path / "mm", phases=(0, 1, 5))


# --------------------------------------------------------------------------- bad input
def manifest_with(tmp_path, rows):
    p = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def test_bad_manifests(tmp_path):
    a = save_nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputDataError, match="duplicate case ids"):
        read_manifest(manifest_with(tmp_path, {"case_id": ["x", "X"], "image": [a, a]}))
    with pytest.raises(InputDataError, match="do not exist.*missing.nii.gz"):
        read_manifest(manifest_with(tmp_path, {"case_id": ["x"], "image": [tmp_path / "missing.nii.gz"]}))
    with pytest.raises(InputDataError, match="unknown split"):
        read_manifest(manifest_with(tmp_path, {"case_id": ["x"], "image": [a], "split": ["holdout"]}))
    with pytest.raises(InputDataError, match="no 'image' column"):
        read_manifest(manifest_with(tmp_path, {"case_id": ["x"], "img": [a]}))
    with pytest.raises(InputDataError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


def load_one(tmp_path, img, lab, img_aff=AFF, lab_aff=AFF):
    i = save_nifti(tmp_path / "i.nii.gz", img, img_aff)
    rows = {"case_id": ["x"], "image": [i]}
    if lab is not None:
        rows["label"] = [save_nifti(tmp_path / "l.nii.gz", lab, lab_aff)]
    return load_case(read_manifest(manifest_with(tmp_path, rows)), "x")


def test_bad_arrays_give_clear_errors(tmp_path):
    img = np.zeros((5, 5, 3), np.float32)
    with pytest.raises(InputDataError, match=r"l\.nii\.gz: label shape \(5, 5, 4\) does not match"):
        load_one(tmp_path, img, np.zeros((5, 5, 4), np.uint8))
    with pytest.raises(InputDataError, match="label affine differs"):
        load_one(tmp_path, img, np.zeros((5, 5, 3), np.uint8), lab_aff=np.eye(4))
    with pytest.raises(InputDataError, match="non-binary mask: values \\[3\\]"):
        load_one(tmp_path, img, np.full((5, 5, 3), 3, np.uint8))
    with pytest.raises(InputDataError, match="not integer-valued"):
        load_one(tmp_path, img, np.full((5, 5, 3), 0.5, np.float32))
    nan_img = img.copy()
    nan_img[0, 0, 0] = np.nan
    with pytest.raises(InputDataError, match=r"i\.nii\.gz: image contains 1 NaN"):
        load_one(tmp_path, nan_img, None)
    (tmp_path / "i.nii.gz").write_bytes(b"not a nifti at all")
    m = manifest_with(tmp_path, {"case_id": ["x"], "image": [tmp_path / "i.nii.gz"]})
    with pytest.raises(InputDataError, match="not a readable NIfTI"):
        load_case(read_manifest(m), "x")


def test_corrupt_npz_and_empty_folder(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "data_1.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputDataError, match=r"data_1\.npz: not a readable \.npz"):
        open_cohort(tmp_path / "f")
    (tmp_path / "e").mkdir()
    with pytest.raises(InputDataError, match="found no NIfTI"):
        open_cohort(tmp_path / "e")


def test_bad_metadata_tables(tmp_path):
    root = make_nifti_folder(tmp_path / "ds")
    (tmp_path / "bad.xlsx").write_bytes(b"not a spreadsheet")
    with pytest.raises(InputDataError, match="cannot read metadata table"):
        open_cohort(root, metadata=tmp_path / "bad.xlsx")
    pd.DataFrame({"case_id": ["c1", "C1"], "sex": ["F", "M"]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputDataError, match="repeat case ids"):
        open_cohort(root, metadata=tmp_path / "dup.csv")
    pd.DataFrame({"name": ["c1"], "sex": ["F"]}).to_csv(tmp_path / "noid.csv", index=False)
    with pytest.raises(InputDataError, match="no case id column"):
        open_cohort(root, metadata=tmp_path / "noid.csv")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), str(root / "labels" / "orphan.nii.gz"))
    with pytest.raises(InputDataError, match="label file\\(s\\) with no image: \\['orphan'\\]"):
        open_cohort(root)


def test_a_folder_holding_a_manifest_opens_the_manifest(tiny_brain):
    from napari_fairseg.data.readers import open_cohort

    via_folder = open_cohort(tiny_brain.source)
    assert via_folder.source == tiny_brain.source / "manifest.csv"
    assert list(via_folder.cases["split"]) == list(tiny_brain.cases["split"])  # not a bare NIfTI scan


def test_results_written_inside_a_dataset_folder_are_never_read_as_its_cases(tmp_path, fundus):
    """Predictions and a project written into a FairSeg folder (the docks' default places) leave
    the cohort as it was: the readers skip folders marked as outputs."""
    import shutil

    from napari_fairseg.active import Project
    from napari_fairseg.inference import InferenceConfig, predict_cases_job
    from napari_fairseg.progress import run_job

    folder = tmp_path / "fundus"
    shutil.copytree(fundus.source, folder)
    ids = sorted(fundus.case_ids)[:2]
    run_job(predict_cases_job(open_cohort(folder), "fundus", ids, settings=InferenceConfig(device="cpu"),
                              out_dir=folder / "predictions"))
    Project.create(folder / "project", open_cohort(folder)).close()
    assert sorted((folder / "predictions").glob("*.npz"))  # npz predictions now lie inside the cohort
    again = open_cohort(folder)
    assert again.kind == "fairseg" and sorted(again.case_ids) == sorted(fundus.case_ids)


def test_unknown_code_errors_list_the_allowed_codes_and_text_ages_are_missing():
    with pytest.raises(InputDataError, match=r"expected -1=unknown, 0=Female, 1=Male\)"):
        decode_fairseg_code("gender", 2, source="data_00001.npz")
    # ages: a median above 150 can only be days; 151 is already above
    _, unit = age_in_years(np.array([151.0, 20.0, 151.0]))
    assert unit == "days"
    years, unit = age_in_years(np.array([40, None, 71], dtype=object))  # a column with a gap
    assert unit == "years" and years[0] == 40.0 and np.isnan(years[1]) and years[2] == 71.0
    groups = mamamia_age_group(pd.Series(["45", "unknown", 71.0, ""]))  # spreadsheet text is read as a number or missing
    assert groups.astype(object).where(groups.notna(), None).tolist() == ["41-50", None, "71+", None]


def test_bin_continuous_keeps_few_levels_and_splits_many_into_quartiles():
    eight = pd.Series([1, 2, 3, 4, 5, 6, 7, 8.0, None])  # at most 8 distinct values: levels as they are
    assert bin_continuous(eight, name="density").tolist()[:8] == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert pd.isna(bin_continuous(eight, name="density").iloc[8])
    nine = pd.Series(np.arange(1.0, 10.0))  # 9 distinct values: quartiles labelled by their ranges
    binned = bin_continuous(nine, name="bmi")
    ref = pd.qcut(nine, 4).map(lambda iv: f"{iv.left:.3g}-{iv.right:.3g}")
    assert binned.tolist() == ref.astype(str).tolist() and binned.nunique() == 4
    codes = pd.Series([0, 1, 1, 0])  # a numeric code with two levels stays two levels
    assert bin_continuous(codes, name="gender").tolist() == ["0", "1", "1", "0"]
    # an age column that is already binned text keeps its labels (only numeric ages get the MAMA-MIA bins)
    text_age = pd.Series(["0-40", "41-50", None, "71+"])
    got = bin_continuous(text_age, name="age")
    assert got.astype(object).where(got.notna(), None).tolist() == ["0-40", "41-50", None, "71+"]
