"""One description per cohort kind (data/kinds.py): every call site asks it, so a new kind is one entry."""

from dataclasses import FrozenInstanceError, replace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_fairseg.data.arrays import (
    NPZ_IMAGE_KEYS,
    label_ref,
    load_case,
    load_label_file,
    load_prediction,
    prediction_path,
    save_label,
)
from napari_fairseg.data.kinds import KIND, NIFTI, NPZ, CohortKind, kind_of
from napari_fairseg.data.manifest import Cohort, default_classes, read_manifest, write_manifest
from napari_fairseg.data.readers import open_cohort
from napari_fairseg.errors import InputDataError
from napari_fairseg.inference.domain import spacing_unit
from napari_fairseg.inference.predict import CasePrediction, map_path, write_case_outputs

#: What each built-in kind did before the table existed, written out by hand: prediction suffix,
#: the file an entropy map goes to, spacing unit, the bundled model the docks pick, default classes.
BEFORE = {
    "nifti": (".nii.gz", "c1_entropy.nii.gz", "mm", "brain", {"foreground": (1,)}),
    "mamamia": (".nii.gz", "c1_entropy.nii.gz", "mm", "brain", {"foreground": (1,)}),
    "image2d": (".png", "c1.npz", "pixel", "fundus", {"foreground": (1,)}),
    "fairseg": (".npz", "c1.npz", "pixel", "fundus", {"cup": (2,), "rim": (1,), "disc": (1, 2)}),
    "fairdomain": (".npz", "c1.npz", "pixel", "fundus", {"cup": (2,), "rim": (1,), "disc": (1, 2)}),
}


def _cohort(kind: str, tmp_path) -> Cohort:
    ref = f"{tmp_path}/c1.npz#slo_fundus" if KIND[kind].storage.keyed else f"{tmp_path}/c1.x"
    return Cohort(pd.DataFrame({"case_id": ["c1"], "image": [ref]}), kind)


def test_every_built_in_kind_is_described_and_names_its_files_as_before(tmp_path):
    assert set(KIND) == set(BEFORE)
    for name, (suffix, entropy, unit, sample, classes) in BEFORE.items():
        cohort = _cohort(name, tmp_path)
        assert kind_of(cohort) is KIND[name] and kind_of(name).name == name
        assert prediction_path(cohort, tmp_path / "p", "c1") == tmp_path / "p" / f"c1{suffix}"
        assert map_path(cohort, tmp_path, "c1", "entropy") == tmp_path / "maps" / entropy
        assert spacing_unit(cohort) == unit and KIND[name].sample == sample
        assert default_classes(name) == classes == cohort.classes


def test_an_existing_prediction_is_found_in_the_storage_lookup_order(tmp_path):
    nifti, image = _cohort("nifti", tmp_path), _cohort("image2d", tmp_path)
    (tmp_path / "c1.nii").write_bytes(b"")
    (tmp_path / "c1.jpg").write_bytes(b"")
    assert prediction_path(nifti, tmp_path, "c1").name == "c1.nii"
    assert prediction_path(image, tmp_path, "c1").name == "c1.jpg"
    (tmp_path / "c1.png").write_bytes(b"")
    assert prediction_path(image, tmp_path, "c1").name == "c1.png"  # .png before .jpg, as before


def test_each_kind_description_is_consistent_with_the_modules_that_read_it():
    from napari_fairseg.models.checkpoint import load_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint

    dims = {}
    for kind in KIND.values():  # every kind's model is bundled and has the kind's dimensions
        if kind.sample not in dims:
            dims[kind.sample] = load_checkpoint(bundled_checkpoint(kind.sample)).config.spatial_dims
        assert dims[kind.sample] == kind.spatial_dims, f"{kind.name}: the {kind.sample} model does not fit"
        assert kind.physical == (kind.spatial_dims == 3)  # today: the 3D kinds are the NIfTI ones
        if kind.reader == "npz":
            assert set(kind.modalities) <= set(NPZ_IMAGE_KEYS)
    with pytest.raises(FrozenInstanceError):
        KIND["nifti"].sample = "fundus"
    with pytest.raises(TypeError):
        KIND["fairseg"].label_codes[-3] = 3  # read-only, even through its mappings


def test_an_unknown_or_malformed_kind_is_refused_naming_what_is_known():
    with pytest.raises(ValueError, match=r"unknown cohort kind 'ct'; expected one of \('nifti'"):
        Cohort(pd.DataFrame({"case_id": ["a"], "image": ["a.nii.gz"]}), "ct")
    with pytest.raises(ValueError, match="unknown cohort kind 'ct'"):
        kind_of("ct")
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        replace(KIND["nifti"], spatial_dims=4)
    with pytest.raises(ValueError, match="reader must be one of"):
        replace(KIND["nifti"], reader="dicom")
    with pytest.raises(ValueError, match="crop must be one of"):
        replace(KIND["nifti"], crop="brain")
    with pytest.raises(ValueError, match="write suffix"):
        replace(NIFTI, write_suffix=".mha")


# --------------------------------------------------------------------------- a new kind, one entry
#: A CT-like NIfTI dataset whose masks use their own codes (100 liver, 200 tumour).
CT = CohortKind("ct", NIFTI, 3, "folder", {"liver": (1,), "tumour": (2,)}, "brain",
                label_codes={0: 0, 100: 1, 200: 2}, description="throw-away test kind")


@pytest.fixture
def ct_kind(monkeypatch):
    monkeypatch.setitem(KIND, "ct", CT)
    return CT


def _ct_folder(root):
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 2]
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    codes = np.zeros((12, 10, 6), np.uint8)
    codes[2:8, 2:8, 1:5] = 100
    codes[4:6, 4:6, 2:4] = 200
    for cid in ("c1", "c2"):
        nib.save(nib.Nifti1Image(rng.normal(size=(12, 10, 6)).astype(np.float32), affine), root / "images" / f"{cid}.nii.gz")
    nib.save(nib.Nifti1Image(codes, affine), root / "labels" / "c1.nii.gz")
    return codes, affine


def test_a_new_kind_loads_saves_and_names_predictions_through_its_description_alone(tmp_path, ct_kind):
    codes, affine = _ct_folder(tmp_path / "ct")
    cohort = open_cohort(tmp_path / "ct", kind="ct")
    assert cohort.kind == "ct" and cohort.classes == {"liver": (1,), "tumour": (2,)}
    case = load_case(cohort, "c1")
    expected = np.select([codes == 100, codes == 200], [1, 2], 0)
    np.testing.assert_array_equal(case.label, expected)  # its codes decoded to class values
    assert case.spacing == (2.0, 1.5, 3.0) and spacing_unit(cohort) == "mm"
    assert load_case(cohort, "c2").label is None

    out = tmp_path / "pred"
    pred = CasePrediction("c1", case.label, maps={"entropy": np.full(codes.shape, 0.5, np.float32)})
    path = write_case_outputs(cohort, out, case, pred)
    assert path == out / "c1.nii.gz"
    written = nib.load(path)
    np.testing.assert_array_equal(np.asarray(written.dataobj), codes)  # written back in its own codes
    np.testing.assert_allclose(written.affine, affine)
    entropy = nib.load(out / "maps" / "c1_entropy.nii.gz")
    np.testing.assert_allclose(entropy.affine, affine)
    np.testing.assert_array_equal(load_prediction(cohort, out, case), expected)
    assert label_ref(cohort, path, "c1") == str(path)  # NIfTI holds no keyed arrays

    back = read_manifest(write_manifest(cohort, tmp_path / "m" / "manifest.csv"))
    assert back.kind == "ct" and back.classes == cohort.classes


def test_a_new_kind_refuses_a_mask_mixing_its_codes_with_class_values(tmp_path, ct_kind):
    _ct_folder(tmp_path / "ct")
    cohort = open_cohort(tmp_path / "ct", kind="ct")
    bad = np.zeros((12, 10, 6), np.uint8)
    bad[0, 0, 0], bad[1, 1, 1] = 100, 2
    nib.save(nib.Nifti1Image(bad, np.diag([2.0, 1.5, 3.0, 1.0])), tmp_path / "bad.nii.gz")
    with pytest.raises(InputDataError, match=r"mask mixes ct label codes \[0, 100, 200\] and class indices"):
        load_label_file(cohort, str(tmp_path / "bad.nii.gz"))


def test_a_keyed_kind_writes_its_codes_under_the_case_mask_key(tmp_path, monkeypatch):
    """An npz variant (the FairSeg storage with other codes) reads and writes through the same table."""
    monkeypatch.setitem(KIND, "npzct", replace(CT, name="npzct", storage=NPZ, spatial_dims=2, reader="npz",
                                               sample="fundus", modalities=("slo",)))
    codes = np.zeros((8, 9), np.int16)
    codes[2:5, 2:6], codes[3, 3] = 100, 200
    np.savez(tmp_path / "c1.npz", slo_fundus=np.ones((8, 9), np.float32), disc_cup_mask=codes)
    cohort = open_cohort(tmp_path, kind="npzct")
    case = load_case(cohort, "c1")
    assert case.spacing == (1.0, 1.0) and set(np.unique(case.label)) == {0, 1, 2}
    out = tmp_path / "out"
    path = save_label(cohort, prediction_path(cohort, out, "c1"), case.label, like=case)
    assert path == out / "c1.npz" and label_ref(cohort, path, "c1") == f"{path}#disc_cup_mask"
    with np.load(path) as data:
        np.testing.assert_array_equal(data["disc_cup_mask"], codes)
