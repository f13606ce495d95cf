"""The npe2 contributions: manifest, reader, writer and sample data (headless and in a real viewer)."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_fairseg import _sample_data
from napari_fairseg._reader import get_reader
from napari_fairseg._writer import write_labels
from napari_fairseg.data.arrays import load_case
from napari_fairseg.errors import InputDataError

MANIFEST = Path(__file__).resolve().parent.parent / "napari_fairseg" / "napari.yaml"
AFFINE = np.array([[0.0, -1.5, 0.0, 40.0], [2.0, 0.0, 0.0, -10.0], [0.0, 0.0, 3.0, 5.0], [0, 0, 0, 1]])


def _nifti(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_manifest_validates_and_every_command_imports():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(MANIFEST)
    pm.validate_imports()  # every python_name resolves to a callable
    assert {c.key for c in pm.contributions.sample_data} == {"brain", "fundus"}
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-fairseg"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and "valid" in (out.stdout + out.stderr), out.stdout + out.stderr


def test_reader_keeps_nifti_geometry_and_tells_labels_from_images(tmp_path, rng):
    img = _nifti(tmp_path / "t1.nii.gz", rng.normal(size=(8, 9, 10)).astype(np.float32))
    lab = _nifti(tmp_path / "seg.nii.gz", (rng.random((8, 9, 10)) > 0.7).astype(np.uint8))
    reader = get_reader([str(img), str(lab)])
    assert reader is not None and get_reader(str(tmp_path / "notes.txt")) is None
    (i_data, i_kw, i_type), (l_data, l_kw, l_type) = reader([str(img), str(lab)])
    assert (i_type, l_type) == ("image", "labels") and i_data.shape == l_data.shape == (8, 9, 10)
    assert i_kw["scale"] == l_kw["scale"] == (2.0, 1.5, 3.0)  # mm per voxel along each array axis
    np.testing.assert_allclose(l_kw["metadata"]["fairseg"]["affine"], AFFINE)  # kept whole for saving
    np.testing.assert_array_equal(l_data, nib.load(str(lab)).get_fdata())


def test_reader_opens_fairseg_npz_manifests_and_folders(tiny_brain, fundus):
    npz = fundus.cases["image"].iloc[0].split("#")[0]
    (img, kw, t1), (mask, mkw, t2) = get_reader(npz)(npz)
    assert (t1, t2) == ("image", "labels") and img.shape == mask.shape
    assert set(np.unique(mask)) <= {0, 1, 2} and (mask == 2).any()  # cup 2, rim 1 (codes −2 / −1 on disk)
    assert "race" in kw["metadata"]["fairseg"]["attributes"]
    manifest = str(tiny_brain.source / "manifest.csv")
    layers = get_reader(manifest)(manifest)
    first = tiny_brain.case_ids[0]
    assert [t for *_, t in layers] == ["image", "labels"]
    tag = layers[0][1]["metadata"]["fairseg"]
    assert tag["case_id"] == first and tag["cohort"] == manifest
    np.testing.assert_array_equal(layers[1][0], load_case(tiny_brain, first).label)
    assert layers[0][1]["scale"] == pytest.approx(load_case(tiny_brain, first).spacing)
    folder = str(fundus.source)
    assert len(get_reader(folder)(folder)) == 2


def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputDataError, match="broken.nii.gz"):
        get_reader(str(bad))(str(bad))
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(InputDataError, match="no fundus image"):
        get_reader(str(other))(str(other))
    nan = _nifti(tmp_path / "nan.nii.gz", np.full((4, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(InputDataError, match="NaN"):
        get_reader(str(nan))(str(nan))


def test_writer_saves_nifti_with_the_source_affine_and_fairseg_codes(tmp_path):
    label = np.zeros((8, 9, 10), np.int32)
    label[2:5, 3:6, 4:7] = 1
    meta = {"metadata": {"fairseg": {"affine": AFFINE.tolist()}}, "affine": np.eye(4)}
    [out] = write_labels(str(tmp_path / "edit.nii.gz"), label, meta)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, AFFINE)  # the source image's geometry, not the layer's
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)
    mask = np.array([[0, 1], [2, 1]])
    [npz] = write_labels(str(tmp_path / "edit.npz"), mask, {})
    np.testing.assert_array_equal(np.load(npz)["disc_cup_mask"], [[0, -1], [-2, -1]])
    with pytest.raises(InputDataError, match="rim 1 and cup 2"):
        write_labels(str(tmp_path / "x.npz"), np.full((2, 2), 3), {})
    with pytest.raises(InputDataError, match=r"\.tif"):
        write_labels(str(tmp_path / "x.tif"), mask, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit.nii.gz", "edit.npz"]  # no leftovers


def test_in_napari_open_sample_and_save(make_napari_viewer, tmp_path, fundus):
    import napari

    viewer = make_napari_viewer()
    path = _nifti(tmp_path / "vol.nii.gz", np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10))
    [layer] = viewer.open(str(path), plugin="napari-fairseg")
    np.testing.assert_allclose(layer.scale, [2.0, 1.5, 3.0])
    edited = viewer.add_labels((layer.data > 300).astype(np.int32), scale=layer.scale, metadata=layer.metadata)
    napari.save_layers(str(tmp_path / "edited.nii.gz"), [edited], plugin="napari-fairseg")
    back = nib.load(str(tmp_path / "edited.nii.gz"))
    np.testing.assert_allclose(back.affine, AFFINE)  # saved in the source image's space
    np.testing.assert_array_equal(np.asarray(back.dataobj), edited.data)
    viewer.layers.clear()
    layers = viewer.open_sample("napari-fairseg", "fundus")
    assert [type(la).__name__ for la in layers] == ["Image", "Labels"]
    expected = _sample_data.fundus()
    np.testing.assert_array_equal(layers[1].data, expected[1][0])
    assert layers[0].name == expected[0][1]["name"] and layers[1].metadata["fairseg"]["case_id"] == layers[0].name
    out = tmp_path / "saved.npz"
    napari.save_layers(str(out), [layers[1]], plugin="napari-fairseg")
    codes = np.load(out)["disc_cup_mask"]
    np.testing.assert_array_equal(codes == -2, layers[1].data == 2)


def test_brain_sample_data_generates_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRSEG_CACHE", str(tmp_path))
    (img, kw, t1), (lab, lkw, t2) = _sample_data.brain()
    assert (t1, t2) == ("image", "labels") and img.shape == lab.shape == (64, 64, 48)
    assert kw["scale"] == pytest.approx((1.5, 1.5, 1.5)) and lab.max() == 1
    assert (tmp_path / "brain-strong-seed0-ndefault" / "manifest.csv").is_file()


def test_in_napari_a_dropped_png_photo_and_mask_open_with_our_reader(make_napari_viewer, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:20], mask[8:14, 8:14] = 1, 2
    Image.fromarray(photo).save(tmp_path / "eye.png")
    Image.fromarray(mask).save(tmp_path / "eye_mask.png")
    viewer = make_napari_viewer()
    [image] = viewer.open(str(tmp_path / "eye.png"), plugin="napari-fairseg")
    [labels] = viewer.open(str(tmp_path / "eye_mask.png"), plugin="napari-fairseg")
    assert image.rgb and np.array_equal(image.data, photo.astype(np.float32))
    assert type(labels).__name__ == "Labels" and np.array_equal(labels.data, mask)
    assert get_reader(str(tmp_path / "notes.txt")) is None  # what we cannot read, we do not claim
