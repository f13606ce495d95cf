"""The preprocessing pipeline: its transforms, their inverse, and prediction on the original grid."""

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from napari_fairseg.cli import main
from napari_fairseg.data.arrays import load_case, load_image
from napari_fairseg.data.manifest import Cohort
from napari_fairseg.data.pipeline import (
    Pipeline,
    case_items,
    invert,
    invert_tensor,
    legacy_pipeline,
    pipeline_for,
    pipeline_of,
    prepare,
)
from napari_fairseg.errors import InputDataError
from napari_fairseg.inference.predict import (
    InferenceConfig,
    Predictor,
    map_path,
    predict_pool_job,
)
from napari_fairseg.models.checkpoint import load_checkpoint, save_checkpoint
from napari_fairseg.models.networks import ModelConfig, build_network
from napari_fairseg.models.zoo import bundled_checkpoint
from napari_fairseg.progress import run_job

from .conftest import blob, save_nifti

SHAPE = (20, 18, 12)
#: stored orientations: RAS, LPS, and anisotropic 0.7 × 0.7 × 1.5 mm stored L-A-S (no obliquity)
AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, -10], [0, 0, 0, 4], [0, 0, 0, 2], [0, 0, 0, 0]]),
    "LPS": np.diag([-1.0, -1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 30], [0, 0, 0, 20], [0, 0, 0, -5], [0, 0, 0, 0]]),
    "aniso": np.diag([-0.7, 0.7, 1.5, 1.0]),
}
#: target spacings (RAS axes): the native one (orientation and crop alone) or twice as fine
TARGETS = {"RAS": (0.5, 0.5, 0.5), "LPS": (1.0, 1.0, 1.0), "aniso": (0.7, 0.7, 0.75)}


def volume(rng):
    """A two-level scan inside a zero border (so the crop has work) and a label blob in it."""
    image = np.zeros(SHAPE, np.float32)
    inside = (slice(3, 16), slice(2, 15), slice(2, 10))
    image[inside] = np.where(rng.random((13, 13, 8)) < 0.5, 100.0, 300.0)
    label = (blob(SHAPE, (8, 7, 5), 3.5) & (image > 0)).astype(np.uint8)
    label[4:6, 3:5, 7:9] = 1  # a second, off-centre piece: flips and crops must put it back
    return image, label


def nifti_cohort(root, affines, rng, *, name="geo"):
    rows = []
    for cid, affine in affines.items():
        image, label = volume(rng)
        save_nifti(root / f"{cid}.nii.gz", image, affine)
        save_nifti(root / f"{cid}_seg.nii.gz", label, affine)
        rows.append({"case_id": cid, "image": str(root / f"{cid}.nii.gz"), "label": str(root / f"{cid}_seg.nii.gz")})
    return Cohort(pd.DataFrame(rows), "nifti", {"foreground": (1,)}, name, source=root)


@pytest.fixture(scope="module")
def geo(tmp_path_factory):
    return nifti_cohort(tmp_path_factory.mktemp("geo"), AFFINES, np.random.default_rng(7))


# --------------------------------------------------------------------------- the inverse
@pytest.mark.parametrize("cid", list(AFFINES))
def test_the_inverse_puts_the_prepared_label_back_exactly_on_the_original_grid(geo, cid):
    pipe = Pipeline(spatial_dims=3, spacing=TARGETS[cid])
    original = load_case(geo, cid)
    prepared = prepare(geo, pipe, cid, with_label=True)
    assert prepared["label"].shape[1:] == prepared["image"].shape[1:] != SHAPE  # the pipeline moved the grid
    back = invert_tensor(prepared, prepared["label"], nearest=True)
    assert tuple(back.shape) == (1, *SHAPE)
    np.testing.assert_array_equal(np.rint(back.numpy()[0]), original.label)
    np.testing.assert_allclose(back.affine.numpy(), AFFINES[cid], atol=1e-5)
    # RAS on the prepared grid: the prepared affine's axes point right, anterior, superior
    spacing = np.diag(prepared["image"].affine.numpy())[:3]
    np.testing.assert_allclose(spacing, TARGETS[cid], atol=1e-6)


class Threshold(nn.Module):
    """'Foreground' wherever the prepared image is far from zero: an identity prediction of the
    two-level scan's mask, whatever grid the pipeline made."""

    def forward(self, x):
        return (x[:, :1].abs() > 0.5).float() * 20 - 10


@pytest.mark.parametrize("cid", list(AFFINES))
def test_predictions_and_maps_are_written_on_the_original_grid_with_the_original_affine(tmp_path, geo, cid):
    pipe = Pipeline(spatial_dims=3, spacing=TARGETS[cid])
    predictor = Predictor(Threshold(), ModelConfig(), InferenceConfig(device="cpu"), pipeline=pipe)
    res = run_job(predict_pool_job(geo, predictor, [cid], out_dir=tmp_path, keep=True))
    truth = (load_image(geo, cid).image[0] != 0)
    written = nib.load(tmp_path / f"{cid}.nii.gz")
    np.testing.assert_allclose(written.affine, AFFINES[cid])
    np.testing.assert_array_equal(np.asarray(written.dataobj), truth)
    np.testing.assert_array_equal(res.predictions[cid].label, truth)  # what the docks get
    for name in ("probability", "entropy", "roi"):
        m = nib.load(map_path(geo, tmp_path, cid, name))
        np.testing.assert_allclose(m.affine, AFFINES[cid])
        assert m.shape == SHAPE and res.predictions[cid].maps[name].shape[-3:] == SHAPE
    prob = res.predictions[cid].maps["probability"][0]
    assert prob[truth].min() > 0.99 and prob[~truth].max() < 0.01


def test_a_softmax_probability_outside_the_crop_is_background(geo):
    pipe = Pipeline(spatial_dims=3, spacing=(1.0, 1.0, 1.0))
    cfg = ModelConfig(network="unet", label_values=(0, 1, 2), head="softmax", features=(4, 8))
    res = run_job(predict_pool_job(geo, Predictor(build_network(cfg), cfg, InferenceConfig(device="cpu"),
                                                  pipeline=pipe), ["LPS"], keep=True))
    prob = res.predictions["LPS"].maps["probability"]
    assert prob.shape == (3, *SHAPE)
    np.testing.assert_allclose(prob.sum(axis=0), 1, atol=1e-5)
    assert prob[0, 0, 0, 0] == 1 and res.predictions["LPS"].maps["entropy"][0, 0, 0] == 0  # cropped away


def test_a_legacy_checkpoint_keeps_the_native_grid_and_whole_image_normalisation(geo):
    from napari_fairseg.models.preprocess import normalise_intensity

    cfg = ModelConfig()
    legacy = legacy_pipeline(cfg)
    brain = load_checkpoint(bundled_checkpoint("brain"))  # as a checkpoint from before pipelines
    old = SimpleNamespace(config=brain.config, meta={k: v for k, v in brain.meta.items() if k != "pipeline"}, path=None)
    assert not legacy.spatial and pipeline_of(old) == legacy_pipeline(brain.config)
    prepared = prepare(geo, legacy, "aniso")
    np.testing.assert_array_equal(prepared["image"].numpy(),
                                  normalise_intensity(load_image(geo, "aniso").image, "zscore"))
    arr = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(1, *SHAPE)
    np.testing.assert_array_equal(invert(prepared, arr, nearest=False), arr)


# --------------------------------------------------------------------------- normalisation
def test_normalisation_does_not_depend_on_the_field_of_view(tmp_path, rng):
    image, _ = volume(rng)
    big = np.zeros((40, 30, 26), np.float32)
    big[7:27, 5:23, 9:21] = image
    save_nifti(tmp_path / "small.nii.gz", image, np.eye(4))
    save_nifti(tmp_path / "big.nii.gz", big, np.eye(4))
    cohort = Cohort(pd.DataFrame({"case_id": ["small", "big"], "image": [str(tmp_path / "small.nii.gz"),
                                                                          str(tmp_path / "big.nii.gz")]}),
                    "nifti", {"foreground": (1,)}, "fov", source=tmp_path)
    for crop in ("none", "foreground"):
        pipe = Pipeline(spatial_dims=3, orientation=None, crop=crop)
        small, large = (prepare(cohort, pipe, c)["image"].numpy()[0] for c in ("small", "big"))
        if crop == "none":
            large = large[7:27, 5:23, 9:21]
        np.testing.assert_allclose(small, large, atol=1e-6)
        fg = small[small != 0]
        assert fg.mean() == pytest.approx(0, abs=1e-5) and fg.std() == pytest.approx(1, abs=1e-4)
    # the former whole-image z-score does depend on it: the test can fail
    legacy = legacy_pipeline(ModelConfig())
    small, large = (prepare(cohort, legacy, c)["image"].numpy()[0] for c in ("small", "big"))
    assert not np.allclose(small, large[7:27, 5:23, 9:21], atol=1e-3)


def test_the_percentile_clip_counts_only_the_foreground():
    from napari_fairseg.data.intensity import normalise_channels

    img = np.zeros((1, 10, 10), np.float32)
    img[0, :5] = np.linspace(1, 100, 50).reshape(5, 10)
    out = normalise_channels(img, clip=(10, 90), normalise="none")
    vals = np.linspace(1, 100, 50)
    lo, hi = np.percentile(vals, (10, 90))
    np.testing.assert_allclose(out[0, :5].ravel(), np.clip(vals, lo, hi), rtol=1e-6)
    assert (out[0, 5:] == 0).all()


# --------------------------------------------------------------------------- 2D
def test_a_2d_resize_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    img = (rng.random((16, 24, 3)) * 255).astype(np.uint8)
    mask = np.zeros((16, 24), np.uint8)
    mask[4:11, 6:19] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    cohort = Cohort(pd.DataFrame({"case_id": ["a"], "image": [str(tmp_path / "a.png")],
                                  "label": [str(tmp_path / "a_mask.png")]}), "image2d", {"disk": (1,)}, "2d",
                    source=tmp_path)
    pipe = pipeline_for(cohort, size=(32, 48))
    assert (pipe.spatial_dims, pipe.orientation, pipe.spacing, pipe.crop) == (2, None, None, "none")
    prepared = prepare(cohort, pipe, "a", with_label=True)
    assert prepared["image"].shape == (3, 32, 48) and prepared["label"].shape == (1, 32, 48)
    back = invert(prepared, prepared["label"], nearest=True)
    np.testing.assert_array_equal(np.rint(back[0]), mask // 255)
    assert invert(prepared, prepared["image"], nearest=False).shape == (3, 16, 24)


# --------------------------------------------------------------------------- choosing and storing
def test_pipeline_for_picks_the_median_spacing_along_the_ras_axes(tmp_path, rng):
    spacings = {"a": (0.7, 0.7, 1.5), "b": (0.8, 0.8, 2.0), "c": (0.6, 0.6, 3.0)}
    affines = {cid: np.diag([*s, 1.0]) for cid, s in spacings.items()}
    # "d" is stored slice axis first (S, A, R): its 1.2 mm axis is the RAS x axis
    affines["d"] = np.array([[0, 0, 1.2, 0], [0, 0.75, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1.0]])
    cohort = nifti_cohort(tmp_path, affines, rng)
    pipe = pipeline_for(cohort)
    assert pipe.spacing == pytest.approx((0.75, 0.725, 2.25))
    assert (pipe.orientation, pipe.crop, pipe.spatial_dims) == ("RAS", "foreground", 3)
    assert pipeline_for(cohort, ["a", "b", "c"]).spacing == pytest.approx((0.7, 0.7, 2.0))
    assert pipeline_for(cohort, spacing=(1, 1, 1)).spacing == (1.0, 1.0, 1.0)
    assert pipeline_for(cohort, model_config=ModelConfig(intensity="minmax")).normalise == "minmax"
    with pytest.raises(ValueError, match="unknown pipeline field"):
        pipeline_for(cohort, spacings=(1, 1, 1))


def test_the_pipeline_round_trips_through_a_saved_checkpoint(tmp_path):
    pipe = Pipeline(spatial_dims=3, spacing=(0.7, 0.7, 1.5), crop="box", clip=(1, 99), normalise="minmax")
    assert Pipeline.from_json(pipe.to_json()) == pipe and pipe.key() == Pipeline.from_json(pipe.to_json()).key()
    assert pipe.key() != Pipeline(spatial_dims=3, spacing=(0.7, 0.7, 1.5)).key()
    cfg = ModelConfig()
    path = save_checkpoint(tmp_path / "m.pt", build_network(cfg), cfg, {"pipeline": pipe.to_json()})
    ckpt = load_checkpoint(path)
    assert pipeline_of(ckpt) == pipe
    assert Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu")).pipeline == pipe


HOSTILE = {
    "unknown key": {"spatial_dims": 3, "exec": "rm -rf /"},
    "tiny spacing": {"spatial_dims": 3, "spacing": [1e-6, 1e-6, 1e-6]},
    "unknown crop": {"spatial_dims": 3, "crop": "../../etc"},
    "bad orientation": {"spatial_dims": 3, "orientation": "RRR"},
    "a boolean dimension": {"spatial_dims": True},
    "string numbers": {"spatial_dims": 3, "clip": ["0", "100"]},
    "huge size": {"spatial_dims": 2, "size": [10**6, 10**6]},
    "newer version": {"spatial_dims": 3, "version": 99},
    "another dimension": {"spatial_dims": 2},
}


@pytest.mark.parametrize("change", list(HOSTILE))
def test_a_hostile_checkpoint_pipeline_is_refused_before_any_work(tmp_path, tiny_brain, capsys, change):
    raw = torch.load(bundled_checkpoint("brain"), weights_only=True)
    raw["meta"] = json.dumps({**json.loads(raw["meta"]), "pipeline": json.dumps(HOSTILE[change])})
    torch.save(raw, tmp_path / "hostile.pt")
    with pytest.raises(InputDataError, match="hostile.pt.*preprocessing"):
        pipeline_of(load_checkpoint(tmp_path / "hostile.pt"))
    rc = main(["--quiet", "predict", str(tiny_brain.source), "--model", str(tmp_path / "hostile.pt"),
               "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "preprocessing" in err and "hostile.pt" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("text", ["not json", "[1, 2]", json.dumps({"orientation": "RAS"})])
def test_pipeline_json_that_is_not_a_pipeline_is_refused(text):
    with pytest.raises(InputDataError, match="pipeline"):
        Pipeline.from_json(text)


# --------------------------------------------------------------------------- MAMA-MIA box, cache items
def test_the_mamamia_breast_box_is_read_in_simpleitk_order(tmp_path, rng):
    root = tmp_path / "mm"
    image = rng.random((16, 14, 10)).astype(np.float32) + 1
    for ph in range(2):
        save_nifti(root / "images" / "duke_001" / f"duke_001_000{ph}.nii.gz", image * (ph + 1), np.eye(4))
    (root / "patient_info_files").mkdir()
    (root / "segmentations" / "expert").mkdir(parents=True)
    box = {"x_min": 2, "x_max": 7, "y_min": 3, "y_max": 12, "z_min": 4, "z_max": 13}  # x: 3rd axis, z: 1st
    (root / "patient_info_files" / "duke_001.json").write_text(
        json.dumps({"patient_id": "DUKE_001", "primary_lesion": {"breast_coordinates": box}}))
    from napari_fairseg.data.readers import open_cohort

    cohort = open_cohort(root, phases=(0, 1))
    pipe = pipeline_for(cohort, orientation=None, spacing=None, clip=None, normalise="none")
    assert pipe.crop == "box"
    prepared = prepare(cohort, pipe, "duke_001")
    np.testing.assert_allclose(prepared["image"].numpy()[1], 2 * image[4:13, 3:12, 2:7])
    np.testing.assert_array_equal(invert(prepared, prepared["image"], nearest=True)[0][4:13, 3:12, 2:7],
                                  image[4:13, 3:12, 2:7])
    (root / "patient_info_files" / "duke_001.json").write_text(json.dumps({"primary_lesion": {}}))
    with pytest.raises(InputDataError, match="duke_001.json.*breast_coordinates"):
        prepare(cohort, pipe, "duke_001")


def test_case_items_are_light_and_go_stale_when_a_file_changes(tmp_path, rng):
    geo = nifti_cohort(tmp_path, {k: AFFINES[k] for k in ("RAS", "LPS")}, rng)
    items = case_items(geo, ["RAS", "LPS"])
    assert [set(i) for i in items] == [{"case_id", "with_label", "stamp"}] * 2
    assert all(isinstance(v, (str, bool)) for i in items for v in i.values())
    img = nib.load(geo.row("RAS")["image"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2, img.affine), geo.row("RAS")["image"])
    again = case_items(geo, ["RAS", "LPS"])
    assert again[0]["stamp"] != items[0]["stamp"] and again[1] == items[1]
    assert case_items(geo, ["RAS"], with_label=False)[0]["with_label"] is False


def test_errors_inside_monai_compose_reach_the_user_as_they_were(tmp_path, rng):
    from napari_fairseg.data.pipeline import deterministic_transforms, input_errors

    geo = nifti_cohort(tmp_path, {"RAS": AFFINES["RAS"]}, rng)
    (tmp_path / "RAS.nii.gz").write_bytes(b"not a nifti")
    chain = deterministic_transforms(geo, Pipeline(spatial_dims=3), with_label=False)
    item = case_items(geo, ["RAS"], with_label=False)[0]
    with pytest.raises(RuntimeError, match="applying transform"):
        chain(item)  # what MONAI does on its own
    with pytest.raises(InputDataError, match="RAS.nii.gz.*not a readable NIfTI"), input_errors():
        chain(item)


def test_a_spacing_the_pipeline_resamples_away_is_no_longer_a_warning(rng):
    from napari_fairseg.inference.domain import case_summary, check_input, training_geometry

    image = rng.normal(100, 20, (1, 16, 16, 12)).astype(np.float32)
    record = training_geometry([case_summary(image, (1.5, 1.5, 1.5))])
    assert [w.kind for w in check_input(record, image, (1.2, 1.2, 1.2))] == ["spacing"]
    assert check_input(record, image, (1.2, 1.2, 1.2), resampled=True) == []
    assert [w.kind for w in check_input(record, image[:, :4], (1.2, 1.2, 1.2), resampled=True)] == ["size"]


def test_fairseg_predict_with_a_pipeline_checkpoint_writes_on_the_scans_grid(tmp_path, geo, capsys):
    from napari_fairseg.data.manifest import write_manifest

    manifest = write_manifest(geo, tmp_path / "geo" / "manifest.csv")
    cfg = ModelConfig()
    pipe = Pipeline(spatial_dims=3, spacing=(0.8, 0.8, 0.8))
    from napari_fairseg.inference.domain import case_summary, training_geometry

    # trained (says the record) at 3 mm: a spacing warning, were the scans not resampled
    record = training_geometry([case_summary(load_image(geo, "RAS").image, (3.0, 3.0, 3.0))])
    ck = save_checkpoint(tmp_path / "m.pt", build_network(cfg), cfg, {
        "classes": {"foreground": [1]}, "pipeline": pipe.to_json(), "training_geometry": record})
    rc = main(["--quiet", "predict", str(manifest), "--model", str(ck), "--out", str(tmp_path / "out"),
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    for cid, affine in AFFINES.items():
        for path in (tmp_path / "out" / f"{cid}.nii.gz", tmp_path / "out" / "maps" / f"{cid}_entropy.nii.gz"):
            img = nib.load(path)
            assert img.shape == SHAPE
            np.testing.assert_allclose(img.affine, affine)
    assert "training spacing" not in capsys.readouterr().err  # resampled, so not a warning


def test_a_2d_model_whose_pipeline_resizes_never_slides_over_its_inputs(tmp_path):
    cfg = ModelConfig(network="unet", spatial_dims=2, features=(4, 8))
    pipe = Pipeline(spatial_dims=2, size=(32, 48))
    ck = load_checkpoint(save_checkpoint(tmp_path / "m.pt", build_network(cfg), cfg, {"pipeline": pipe.to_json()}))
    predictor = Predictor.from_checkpoint(ck, InferenceConfig(device="cpu"))
    assert predictor.window == (32, 48) and predictor.forward_steps((1, 1, 32, 48)) == 1


def test_a_persistent_dataset_caches_prepared_cases_until_a_file_changes(tmp_path, rng):
    from monai.data import PersistentDataset

    from napari_fairseg.data.pipeline import deterministic_transforms

    geo = nifti_cohort(tmp_path / "data", {"LPS": AFFINES["LPS"]}, rng)
    pipe = Pipeline(spatial_dims=3, spacing=(1.0, 1.0, 1.0))
    cache = tmp_path / "cache" / pipe.key()

    def load():
        ds = PersistentDataset(case_items(geo, ["LPS"]), deterministic_transforms(geo, pipe), cache_dir=cache)
        return ds[0]

    first = load()
    assert first["case_id"] == "LPS" and first["label"].dtype == torch.int16
    assert len(list(cache.iterdir())) == 1
    np.testing.assert_array_equal(load()["image"].numpy(), first["image"].numpy())
    assert len(list(cache.iterdir())) == 1  # read back, not recomputed
    path = geo.row("LPS")["image"]
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), path)
    assert not np.array_equal(load()["image"].numpy(), first["image"].numpy())
    assert len(list(cache.iterdir())) == 2
    back = invert(first, first["label"], nearest=True)  # a cached case still inverts
    np.testing.assert_array_equal(np.rint(back[0]), load_case(geo, "LPS").label)


def test_tissue_statistics_ignore_the_background_and_the_field_of_view():
    """The same tissue with a zero or a noisy background, in a field of view 3× larger or
    cropped to it, gets (nearly) the same normalised values; one case is checked by hand."""
    from napari_fairseg.data.intensity import normalise_channels

    rng = np.random.default_rng(0)
    tissue = rng.uniform(0.3, 1.0, (20, 20, 16)).astype(np.float32)

    def placed(background, pad):
        out = background(np.array(tissue.shape) + 2 * pad)
        out[pad:pad + 20, pad:pad + 20, pad:pad + 16] = tissue
        return out[None]

    def zeros(shape):
        return np.zeros(shape, np.float32)

    def noise(shape):
        return np.abs(rng.normal(0, 0.02, shape)).astype(np.float32)  # a magnitude image's background

    def tissue_values(image, pad):
        out = normalise_channels(image, clip=(0.5, 99.5), normalise="zscore", statistics="tissue")
        return out[0, pad:pad + 20, pad:pad + 20, pad:pad + 16]

    ref = tissue_values(placed(zeros, 8), 8)
    # by hand: the tissue threshold, the tissue percentiles, their mean and std
    x = placed(zeros, 8)[0].astype(np.float64)
    lo, hi = np.percentile(x, (0.5, 99.5))
    t = x[x > lo + 0.1 * (hi - lo)]
    a, b = np.percentile(t, (0.5, 99.5))
    t = np.clip(t, a, b)
    np.testing.assert_allclose(ref, (np.clip(tissue, a, b) - t.mean()) / t.std(), atol=1e-5)
    assert t.size == tissue.size  # every tissue voxel counted, no background voxel
    for background, pad in ((noise, 8), (zeros, 24), (noise, 24)):
        np.testing.assert_allclose(tissue_values(placed(background, pad), pad), ref, atol=0.02)
    cropped = normalise_channels(tissue[None], clip=(0.5, 99.5), normalise="zscore", statistics="tissue")[0]
    # a crop of tissue alone puts its darkest tenth below the threshold: about 0.2 std of shift
    assert np.abs(cropped - ref).mean() < 0.25
    # what the non-zero foreground does instead: a noisy background counts as foreground
    fg = normalise_channels(placed(noise, 24), clip=(0.5, 99.5), normalise="zscore", statistics="foreground")
    assert np.abs(fg[0, 24:44, 24:44, 24:40] - ref).mean() > 0.5
