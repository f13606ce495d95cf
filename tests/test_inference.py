"""Device choice, whole-image / sliding-window / batched prediction, files and cancel."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from napari_fairseg.data.arrays import load_image, load_prediction
from napari_fairseg.errors import Cancelled, InputDataError
from napari_fairseg.inference import InferenceConfig, Predictor, choose_device, predict_pool_job
from napari_fairseg.inference.device import autocast
from napari_fairseg.inference.predict import map_path
from napari_fairseg.models import ModelConfig, build_network, load_checkpoint, save_checkpoint
from napari_fairseg.progress import run_job

from .test_uncertainty import PARTIAL_ROI_EXPECTED, partial_roi_probabilities


def test_device_choice_on_a_cpu_machine():
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert choose_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            choose_device("cuda")
    with autocast(torch.device("cpu")):  # no-op on the CPU: float32 stays float32
        assert (torch.ones(2) @ torch.ones(2)).dtype == torch.float32


class Pointwise(nn.Module):
    """A 1×1 convolution: every voxel's output depends on that voxel only."""

    def __init__(self, dims=3, out=1):
        super().__init__()
        self.conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(1, out, 1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)

    def forward(self, x):
        return self.conv(x)


def test_sliding_window_equals_whole_image_for_a_pointwise_network(rng):
    x = torch.from_numpy(rng.normal(size=(1, 1, 40, 36, 30)).astype(np.float32))
    model = Pointwise()
    whole = Predictor(model, ModelConfig(), InferenceConfig(device="cpu")).logits(x)
    sw_cfg = ModelConfig(patch_size=(16, 16, 16))
    sliding = Predictor(model, sw_cfg, InferenceConfig(device="cpu", overlap=0.5)).logits(x)
    assert sliding.shape == whole.shape == (1, 1, 40, 36, 30)
    torch.testing.assert_close(sliding, whole, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(whole, model(x))


def test_tta_of_a_flip_equivariant_network_is_the_plain_prediction(rng):
    x = torch.from_numpy(rng.normal(size=(2, 1, 12, 10, 8)).astype(np.float32))
    plain = Predictor(Pointwise(), ModelConfig(), InferenceConfig(device="cpu")).predict(x)
    tta = Predictor(Pointwise(), ModelConfig(), InferenceConfig(device="cpu", uncertainty="tta")).predict(x)
    torch.testing.assert_close(tta["probability"], plain["probability"])
    assert tta["mutual_information"].abs().max() < 1e-5  # all passes agree


def test_mc_dropout_needs_dropout_and_is_seeded(rng):
    x = torch.from_numpy(rng.normal(size=(1, 1, 16, 16, 8)).astype(np.float32))
    with pytest.raises(InputDataError, match="trained with dropout > 0"):
        Predictor(build_network(ModelConfig()), ModelConfig(),
                  InferenceConfig(device="cpu", uncertainty="mc")).predict(x)
    cfg = ModelConfig(dropout=0.3)
    torch.manual_seed(0)
    model = build_network(cfg)
    settings = InferenceConfig(device="cpu", uncertainty="mc", passes=4, seed=5)
    a = Predictor(model, cfg, settings).predict(x)
    b = Predictor(model, cfg, settings).predict(x)
    torch.testing.assert_close(a["probability"], b["probability"])
    assert a["mutual_information"].max() > 1e-4  # the passes differ
    assert not any(m.training for m in model.modules())  # dropout switched back off
    det = Predictor(model, cfg, InferenceConfig(device="cpu")).predict(x)
    assert not torch.allclose(det["probability"], a["probability"])


@pytest.fixture(scope="module")
def brain_ckpt(tmp_path_factory):
    cfg = ModelConfig(dropout=0.1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "brain.pt"
    return load_checkpoint(save_checkpoint(path, build_network(cfg), cfg, {"classes": {"caudate": [1]}}))


def test_pool_prediction_writes_files_in_the_cohort_geometry(tmp_path, tiny_brain, brain_ckpt):
    predictor = Predictor.from_checkpoint(brain_ckpt, InferenceConfig(device="cpu", batch_size=4))
    events = []
    res = run_job(predict_pool_job(tiny_brain, predictor, out_dir=tmp_path, keep=True, checkpoint=brain_ckpt),
                  on_progress=events.append)
    per_batch = [e for e in events if e.stage == "predict"]
    assert [e.done for e in per_batch] == [0, 4, 6] and per_batch[-1].total == 6
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores["case_id"]) == tiny_brain.case_ids
    for cid in tiny_brain.case_ids:
        case = load_image(tiny_brain, cid)
        pred = load_prediction(tiny_brain, tmp_path, case)  # checks shape and affine
        kept = res.predictions[cid]
        np.testing.assert_array_equal(pred, kept.label)
        ent = nib.load(map_path(tiny_brain, tmp_path, cid, "entropy"))
        np.testing.assert_allclose(ent.affine, case.affine)
        np.testing.assert_allclose(ent.get_fdata(), kept.maps["entropy"], atol=1e-6)
        assert kept.maps["probability"].shape == (1, *case.spatial_shape)
        row = scores.set_index("case_id").loc[cid]
        assert row["masked_entropy"] == pytest.approx(kept.scores["masked_entropy"], rel=1e-5)


def test_batched_equals_one_by_one(tiny_brain, brain_ckpt):
    one = run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(
        brain_ckpt, InferenceConfig(device="cpu", batch_size=1)), keep=True))
    many = run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(
        brain_ckpt, InferenceConfig(device="cpu", batch_size=5)), keep=True))
    for cid in tiny_brain.case_ids:
        np.testing.assert_allclose(one.predictions[cid].maps["probability"],
                                   many.predictions[cid].maps["probability"], atol=1e-5)
    pd.testing.assert_frame_equal(one.scores, many.scores, atol=1e-5)


def test_fundus_predictions_are_fairseg_npz(tmp_path, fundus):
    cfg = ModelConfig(network="unet", spatial_dims=2, label_values=(0, 1, 2), head="softmax",
                      features=(4, 8), dropout=0.1)
    ck = load_checkpoint(save_checkpoint(tmp_path / "f.pt", build_network(cfg), cfg, {"classes": fundus.classes}))
    ids = fundus.case_ids[:3]
    run_job(predict_pool_job(fundus, Predictor.from_checkpoint(ck, InferenceConfig(device="cpu", uncertainty="mc",
                                                                                   passes=3)),
                             ids, out_dir=tmp_path / "out", checkpoint=ck))
    for cid in ids:
        raw = np.load(tmp_path / "out" / f"{cid}.npz")
        assert set(np.unique(raw["disc_cup_mask"])) <= {0, -1, -2}  # the dataset's own codes
        maps = np.load(map_path(fundus, tmp_path / "out", cid))
        assert maps["probability"].shape == (3, 128, 128)
        np.testing.assert_allclose(maps["probability"].sum(axis=0), 1, atol=1e-5)
        assert {"entropy", "mutual_information", "roi"} <= set(maps.files)


def test_wrong_checkpoint_fails_before_writing(tmp_path, fundus, brain_ckpt):
    predictor = Predictor.from_checkpoint(brain_ckpt, InferenceConfig(device="cpu"))
    with pytest.raises(InputDataError, match="another task"):
        run_job(predict_pool_job(fundus, predictor, fundus.case_ids[:2], out_dir=tmp_path, checkpoint=brain_ckpt))
    assert not any(tmp_path.iterdir())


def test_cancel_leaves_only_complete_files(tmp_path, tiny_brain, brain_ckpt):
    predictor = Predictor.from_checkpoint(brain_ckpt, InferenceConfig(device="cpu", batch_size=2))
    seen = []
    with pytest.raises(Cancelled):
        run_job(predict_pool_job(tiny_brain, predictor, out_dir=tmp_path),
                on_progress=lambda e: e.stage == "predict" and seen.append(e), should_cancel=lambda: len(seen) >= 2)
    written = sorted(p.name for p in tmp_path.glob("*.nii.gz"))
    assert written == [f"{c}.nii.gz" for c in tiny_brain.case_ids[:2]]
    assert not (tmp_path / "scores.csv").exists()
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]
    for name in written:
        nib.load(tmp_path / name).get_fdata()  # complete, readable


def test_nan_image_names_the_case(tmp_path, tiny_brain, brain_ckpt):
    from napari_fairseg.data.manifest import Cohort

    cid = tiny_brain.case_ids[0]
    img = nib.load(tiny_brain.row(cid)["image"])
    data = img.get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    cases = tiny_brain.cases.copy()
    cases.loc[cases["case_id"] == cid, "image"] = str(bad)
    cohort = Cohort(cases, "nifti", tiny_brain.classes, "bad")
    with pytest.raises(InputDataError, match="bad.nii.gz.*NaN"):
        run_job(predict_pool_job(cohort, Predictor.from_checkpoint(brain_ckpt, InferenceConfig(device="cpu")), [cid]))


def test_pool_scoring_without_maps_gives_the_same_scores(tiny_brain, brain_ckpt):
    full = run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(
        brain_ckpt, InferenceConfig(device="cpu", roi_radius=2)), keep=True))
    lean = run_job(predict_pool_job(tiny_brain, Predictor.from_checkpoint(
        brain_ckpt, InferenceConfig(device="cpu", roi_radius=2, maps=False)), keep=True))
    for col in ("masked_entropy", "roi_voxels", "roi_empty", "foreground_voxels"):
        np.testing.assert_allclose(lean.scores[col].astype(float), full.scores[col].astype(float), rtol=1e-5)
    for cid in tiny_brain.case_ids:
        np.testing.assert_array_equal(lean.predictions[cid].label, full.predictions[cid].label)
        assert lean.predictions[cid].maps == {}
        roi = full.predictions[cid].maps["roi"]
        ent = full.predictions[cid].maps["entropy"]
        if roi.any():  # hand check of Eq. 1 from the full maps
            assert full.scores.set_index("case_id").loc[cid, "masked_entropy"] == pytest.approx(ent[roi].mean(), rel=1e-5)


@pytest.mark.parametrize("maps", [True, False])
def test_prediction_scores_a_partial_roi_as_equation_1_by_hand(maps):
    """A network whose logits are its input: the predictor's per-case scores on a known ROI.

    The ROI (54 and 8 voxels) is a small part of the 288-voxel images and of its bounding box
    (196 voxels), and its mean entropy differs from the image's, so dividing by the image,
    averaging the whole image or counting the box each give other numbers.
    """
    assert InferenceConfig().roi_radius == 3  # the README's default r
    prob = partial_roi_probabilities()
    logits = torch.log(prob) - torch.log1p(-prob)
    predictor = Predictor(nn.Identity(), ModelConfig(), InferenceConfig(device="cpu", roi_radius=1, maps=maps))
    out = predictor.predict(logits)
    assert out["masked_entropy"].tolist() == pytest.approx(PARTIAL_ROI_EXPECTED["masked"], rel=1e-5)
    assert out["roi_voxels"].tolist() == PARTIAL_ROI_EXPECTED["roi_voxels"]
    assert out["foreground_voxels"].tolist() == [2, 1] and not out["roi_empty"].any()
    if maps:
        assert out["roi"].sum(dim=(1, 2, 3)).tolist() == PARTIAL_ROI_EXPECTED["roi_voxels"]
        assert out["mean_entropy"].tolist() == pytest.approx(PARTIAL_ROI_EXPECTED["image_mean"], rel=1e-5)
    else:
        assert "roi" not in out and "entropy" not in out


# --------------------------------------------------------------------------- progress and cancel inside one case
def test_stepwise_sliding_window_equals_monai(rng):
    from monai.inferers import sliding_window_inference

    from napari_fairseg.inference.sliding import sliding_window_steps, window_batches

    cfg = ModelConfig(features=(4, 8))
    torch.manual_seed(0)
    model = build_network(cfg).eval()
    for shape, roi, sw in (((2, 1, 40, 36, 30), (16, 16, 16), 3), ((1, 1, 40, 12, 30), (16, 16, 16), 4)):
        x = torch.from_numpy(rng.normal(size=shape).astype(np.float32))  # the second is padded on one axis
        with torch.inference_mode():
            ref = sliding_window_inference(x, roi, sw, model, overlap=0.25, mode="gaussian")
        steps = sliding_window_steps(x, roi, sw, model, overlap=0.25, step=torch.inference_mode)
        done = []
        while True:
            try:
                done.append(next(steps))
            except StopIteration as stop:
                out = stop.value
                break
        assert done == list(range(1, window_batches(shape[2:], roi, sw, shape[0], overlap=0.25) + 1))
        assert len(done) > 2
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def _old_mc_probability(model, cfg, x, passes, seed):
    """The former path: seeded MC passes through MONAI's sliding_window_inference in one call."""
    from monai.inferers import sliding_window_inference

    drops = [m for m in model.modules() if isinstance(m, nn.Dropout3d | nn.Dropout)]
    torch.manual_seed(seed)
    for m in drops:
        m.train()
    with torch.inference_mode():
        probs = [torch.sigmoid(sliding_window_inference(x, cfg.patch_size, 4, model, overlap=0.25, mode="gaussian"))
                 for _ in range(passes)]
    for m in drops:
        m.eval()
    return torch.stack(probs).mean(0)


def test_mc_dropout_with_sliding_windows_yields_per_window_batch_and_matches_the_former_path(rng):
    cfg = ModelConfig(dropout=0.2, patch_size=(16, 16, 16), features=(4, 8))
    torch.manual_seed(0)
    model = build_network(cfg)
    x = torch.from_numpy(rng.normal(size=(1, 1, 30, 28, 20)).astype(np.float32))
    predictor = Predictor(model, cfg, InferenceConfig(device="cpu", uncertainty="mc", passes=3, seed=7))
    events = []
    before = torch.random.get_rng_state()
    out = run_job(predictor.predict_job(x, label="case"), on_progress=events.append)
    assert torch.equal(torch.random.get_rng_state(), before)
    per_pass = predictor.forward_steps(tuple(x.shape))
    assert per_pass > 1 and [e.done for e in events] == list(range(1, 3 * per_pass + 1))
    assert {e.total for e in events} == {3 * per_pass} and {e.stage for e in events} == {"forward"}
    assert events[per_pass].message == f"case: pass 2/3, windows 1/{per_pass}"
    torch.testing.assert_close(out["probability"], _old_mc_probability(model, cfg, x, 3, 7), atol=1e-6, rtol=1e-6)


def test_tta_yields_one_event_per_pass(rng):
    x = torch.from_numpy(rng.normal(size=(1, 1, 12, 10, 8)).astype(np.float32))
    events = []
    run_job(Predictor(Pointwise(), ModelConfig(), InferenceConfig(device="cpu", uncertainty="tta")).predict_job(x),
            on_progress=events.append)
    assert [(e.done, e.total, e.message) for e in events] == [(k, 4, f"pass {k}/4") for k in range(1, 5)]


def test_a_closed_single_case_job_stops_at_once_and_writes_nothing(tmp_path, tiny_brain):
    """Consume a 32-pass MC job on one case up to its 2nd progress event, close it: it stops there."""
    import time

    from napari_fairseg.inference import predict_cases_job

    cfg = ModelConfig(dropout=0.1)
    torch.manual_seed(0)
    ckpt_path = save_checkpoint(tmp_path / "m.pt", build_network(cfg), cfg, {"classes": {"caudate": [1]}})
    settings = InferenceConfig(device="cpu", uncertainty="mc", passes=32)
    out = tmp_path / "out"
    job = predict_cases_job(tiny_brain, ckpt_path, [tiny_brain.case_ids[0]], settings=settings, out_dir=out)
    first = next(job)
    assert (first.stage, first.message) == ("load", "Loading model…")  # before the checkpoint is read
    seen, rng_between = [], None
    while len([e for e in seen if e.stage == "forward"]) < 2:
        seen.append(next(job))
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()  # nothing leaks between events
        if seen[-1].stage == "forward" and rng_between is None:
            rng_between = torch.random.get_rng_state()  # MC dropout draws from a stream of its own
    assert seen[-1].done == 2 and seen[-1].total == 32
    t0 = time.perf_counter()
    job.close()
    assert time.perf_counter() - t0 < 1.0
    assert not out.exists()  # no prediction, no map, no scores.csv
    assert torch.equal(torch.random.get_rng_state(), rng_between)
    # the same job run to its end does write, so the test above could fail
    run_job(predict_cases_job(tiny_brain, ckpt_path, [tiny_brain.case_ids[0]],
                              settings=InferenceConfig(device="cpu", uncertainty="mc", passes=2), out_dir=out))
    assert (out / f"{tiny_brain.case_ids[0]}.nii.gz").is_file() and (out / "scores.csv").is_file()


def test_the_model_loads_inside_the_job(tmp_path, tiny_brain):
    from napari_fairseg.inference import predict_cases_job

    job = predict_cases_job(tiny_brain, tmp_path / "missing.pt")  # nothing is read when the job is made
    assert next(job).message == "Loading model…"
    with pytest.raises(InputDataError, match="checkpoint file not found"):
        next(job)
    job = predict_cases_job(tiny_brain, "brain", tiny_brain.case_ids[:1],
                            settings=InferenceConfig(device="cpu", uncertainty="none"), keep=True)
    events = []
    res = run_job(job, on_progress=events.append)
    assert [e.stage for e in events][:2] == ["load", "load"] and "DEMO" in events[1].message
    assert list(res.predictions) == tiny_brain.case_ids[:1]


def test_a_whole_image_model_slides_its_training_size_over_much_larger_images(tmp_path):
    """Far larger inputs than a whole-image model was trained on go through windows of its
    training size (MONAI's sliding windows, Gaussian blending): progress and Cancel per window
    batch, bounded memory; inputs near the training size still run whole."""
    import torch
    from monai.inferers import sliding_window_inference

    from napari_fairseg.inference import InferenceConfig, Predictor
    from napari_fairseg.models.checkpoint import load_checkpoint, save_checkpoint
    from napari_fairseg.models.zoo import bundled_checkpoint

    # the bundled brain network as if trained on whole 64×64×48 images (no patch)
    brain = load_checkpoint(bundled_checkpoint("brain"))
    geometry = {**brain.meta["training_geometry"], "size": {k: [64, 64, 48] for k in ("median", "min", "max")}}
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "whole.pt", brain.build(torch.device("cpu")),
                                           brain.config.replace(patch_size=None),
                                           {**brain.meta, "training_geometry": geometry}))
    assert ckpt.config.patch_size is None
    p = Predictor.from_checkpoint(ckpt, InferenceConfig(device="cpu", amp=False))
    assert p.window == (64, 64, 48)  # the training images' largest size, a multiple of the divisor
    assert p.forward_steps((1, 1, 64, 64, 48)) == 1 and p.forward_steps((1, 1, 120, 128, 96)) == 1
    assert p.sw_batch_size == (1 << 21) // (64 * 64 * 48) and p.forward_steps((1, 1, 197, 233, 189)) == 10
    x = torch.randn(1, 1, 140, 60, 40, generator=torch.Generator().manual_seed(0))
    ours = p.logits(x)
    with torch.inference_mode():
        ref = sliding_window_inference(x, (64, 64, 48), p.sw_batch_size, p.model, overlap=0.25, mode="gaussian")
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-5)
