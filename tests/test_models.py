"""Network registry, padding, and safe checkpoints."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_fairseg.data.arrays import load_case
from napari_fairseg.errors import InputDataError
from napari_fairseg.models import (
    ModelConfig,
    build_network,
    check_compatible,
    load_checkpoint,
    pad_to_divisible,
    save_checkpoint,
    size_divisor,
)
from napari_fairseg.models.zoo import BUNDLED, bundled_checkpoint, resolve_checkpoint


@pytest.mark.parametrize(("network", "dims"), [("light_unet", 3), ("unet", 2), ("unet", 3), ("segresnet", 3),
                                               ("swinunetr", 2)])
def test_every_network_takes_odd_sizes_and_gives_them_back(network, dims):
    cfg = ModelConfig(network=network, spatial_dims=dims, in_channels=2, label_values=(0, 1, 2), head="softmax")
    model = build_network(cfg).eval()
    x = torch.randn((1, 2, 19, 23, 13) if dims == 3 else (1, 2, 37, 29))
    xp, crop = pad_to_divisible(x, size_divisor(cfg))
    assert all(s % size_divisor(cfg) == 0 for s in xp.shape[2:])
    assert torch.equal(xp[crop], x)  # padding is symmetric zeros around the original
    with torch.no_grad():
        y = model(xp)[crop]
    assert y.shape == (1, 3, *x.shape[2:])


def test_light_unet_is_seed_001s_network():
    model = build_network(ModelConfig())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
    assert {m.out_channels for m in convs} - {1} == {8, 16}  # two levels: 8 and 16 features
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.InstanceNorm3d | nn.BatchNorm3d) for m in model.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert ModelConfig().out_channels == 1 and ModelConfig().head == "sigmoid"
    assert size_divisor(ModelConfig()) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"network": "vnet"}, "network must be one of"),
    ({"label_values": (0, 1, 2)}, "sigmoid head predicts exactly two"),
    ({"label_values": (1, 2)}, "start with background 0"),
    ({"patch_size": (33, 32, 32)}, "multiple of 2"),
    ({"network": "light_unet", "spatial_dims": 2}, "3D network"),
    ({"dropout": 1.0}, "dropout must be in"),
])
def test_config_errors_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    cfg = ModelConfig(dropout=0.1, patch_size=(16, 16, 16))
    torch.manual_seed(0)
    model = build_network(cfg).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, {"classes": {"caudate": (1,)}, "cohort": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    assert ckpt.config == cfg and ckpt.classes == {"caudate": (1,)} and ckpt.meta["cohort"] == "x"
    assert ckpt.meta["package_version"]
    x = torch.randn(1, 1, 16, 16, 8)
    with torch.no_grad():
        assert torch.equal(ckpt.build()(x), model(x))


class _Evil:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / "pwned")
    payload = {"format": "napari-fairseg-checkpoint", "format_version": 1, "config": "{}", "meta": "{}",
               "state_dict": {}, "hook": evil}
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    # the file really is a code-executing pickle: unrestricted unpickling runs it
    with pytest.raises(InputDataError, match="refused to load"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()


def test_corrupt_and_foreign_files_get_clear_errors(tmp_path):
    cfg = ModelConfig()
    good = save_checkpoint(tmp_path / "good.pt", build_network(cfg), cfg)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputDataError, match=r"truncated\.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(build_network(cfg).state_dict(), foreign)
    with pytest.raises(InputDataError, match="not a napari-fairseg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(InputDataError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(InputDataError, match="notes.pt"):
        load_checkpoint(text)


def test_weights_that_do_not_fit_the_config(tmp_path):
    cfg = ModelConfig()
    path = save_checkpoint(tmp_path / "m.pt", build_network(ModelConfig(features=(4, 8))), cfg)
    with pytest.raises(InputDataError, match="weights do not fit"):
        load_checkpoint(path).build()


def test_checkpoint_for_another_task_is_refused(tmp_path, tiny_brain, fundus):
    fundus_cfg = ModelConfig(network="unet", spatial_dims=2, label_values=(0, 1, 2), head="softmax")
    ck = load_checkpoint(save_checkpoint(tmp_path / "f.pt", build_network(fundus_cfg), fundus_cfg,
                                         {"classes": fundus.classes}))
    with pytest.raises(InputDataError, match="trained for another task"):
        check_compatible(ck, tiny_brain)
    check_compatible(ck, fundus, image_shape=(1, 128, 128))
    with pytest.raises(InputDataError, match=r"has 3 image channel\(s\) but the checkpoint f.pt expects 1"):
        check_compatible(ck, fundus, image_shape=(3, 128, 128))
    with pytest.raises(InputDataError, match="2D model but cohort"):
        check_compatible(ck, fundus, image_shape=(1, 8, 8, 8))


def test_bundled_checkpoints_fit_their_sample_cohorts(tiny_brain, fundus):
    for name, cohort in (("brain", tiny_brain), ("fundus", fundus)):
        ck = load_checkpoint(resolve_checkpoint(name))
        check_compatible(ck, cohort)
        assert ck.meta["epoch"] >= 1 and ck.meta["val_dice"] > 0.6, (name, ck.meta.get("val_dice"))
        assert ck.config.dropout > 0  # MC dropout works out of the box
    assert set(BUNDLED) == {"brain", "fundus"}
    with pytest.raises(InputDataError, match="bundled ones: brain, fundus"):
        resolve_checkpoint("nope")
    with pytest.raises(ValueError):
        bundled_checkpoint("nope")


def test_checkpoint_bytes_are_plain_containers(tmp_path):
    cfg = ModelConfig()
    path = save_checkpoint(tmp_path / "m.pt", build_network(cfg), cfg, {"shape": np.int64(3)})
    payload = torch.load(path, weights_only=True)
    assert isinstance(payload["config"], str) and isinstance(payload["meta"], str)
    assert json.loads(payload["meta"])["shape"] == 3  # numpy scalars become JSON numbers
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())


#: SHA-256 of the bundled weights as `make zoo` trained them (its last step adds only metadata).
BUNDLED_WEIGHTS = {"brain": "52b74d4b6a2c72464fbb0c35b4844ee3e4b0f05ba2ae8f2b0a77e95e8dd66298",
                   "fundus": "036cd3149045610d2df78f0868acfa71eb8f0a6d093cb21a0e7c8c3997af3751"}


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_checkpoints_are_labelled_demo_and_record_their_training_geometry(name):
    from napari_fairseg.models.checkpoint import weights_digest
    from napari_fairseg.models.zoo import BUNDLED_META, bundled_models

    ck = load_checkpoint(bundled_checkpoint(name))
    assert weights_digest(ck) == BUNDLED_WEIGHTS[name]  # records added without touching the weights
    assert ck.meta["display_name"] == BUNDLED_META[name]["display_name"] == bundled_models()[name]
    assert "DEMO" in ck.meta["display_name"] and "synthetic" in ck.meta["description"]
    geo = ck.meta["training_geometry"]
    assert geo["n_cases"] == ck.meta["n_train"] and geo["channels"] == ck.config.in_channels == 1
    if name == "brain":
        assert geo["spacing"]["median"] == [1.5, 1.5, 1.5]
        assert geo["size"]["min"] == [64, 64, 48] and geo["size"]["max"] == [132, 156, 127]  # crops, whole heads
        assert geo["spacing_unit"] == "mm" and 0.8 < geo["intensity"]["p99"][0] <= 1.0  # the MNI T1 in [0, 1]
    else:
        assert geo["size"]["median"] == [128, 128] and geo["spacing_unit"] == "pixel"
        assert geo["intensity"]["p1"] == [0.0] and 150 < geo["intensity"]["p99"][0] <= 255  # uint8 SLO


def test_recording_the_geometry_later_keeps_the_weights_and_checks_the_cohort(tmp_path, fundus):
    import json as _json

    from napari_fairseg.models.checkpoint import weights_digest
    from napari_fairseg.training.trainer import record_training_geometry

    cfg = ModelConfig(network="unet", spatial_dims=2, label_values=(0, 1, 2), head="softmax", features=(4, 8))
    torch.manual_seed(0)
    meta = {"classes": fundus.classes, "group_attribute": "race", "n_train": 30, "n_val": 10, "log": "[]",
            "train_config": _json.dumps({"val_fraction": 0.25, "seed": 0})}
    src = save_checkpoint(tmp_path / "old.pt", build_network(cfg), cfg, meta)
    out = record_training_geometry(src, tmp_path / "new.pt", fundus, meta={"display_name": "x DEMO"})
    old, new = load_checkpoint(src), load_checkpoint(out)
    assert weights_digest(new) == weights_digest(old)
    assert new.meta["training_geometry"] == load_checkpoint(bundled_checkpoint("fundus")).meta["training_geometry"]
    assert new.meta["display_name"] == "x DEMO" and "log" not in new.meta
    wrong = save_checkpoint(tmp_path / "w.pt", build_network(cfg), cfg, {**meta, "n_train": 12})
    with pytest.raises(InputDataError, match="not the cohort this model was trained on"):
        record_training_geometry(wrong, tmp_path / "w2.pt", fundus)


# --------------------------------------------------------------------------- the bundled models' recorded Dice
@pytest.fixture(scope="module")
def zoo_brain_cohort(tmp_path_factory):
    """The bundled brain model's validation cases, made again by `make zoo`'s own generators
    (`fairseg sample brain`, `--field whole`), only those: every case has its own seed, so they
    are the very cases it was validated on (`test_synthetic` checks that a part equals the whole)."""
    from napari_fairseg.data.manifest import merge_cohorts
    from napari_fairseg.data.synthetic import make_sample

    out = tmp_path_factory.mktemp("zoo")
    val_ids = load_checkpoint(bundled_checkpoint("brain")).meta["val_ids"]
    crops = [c for c in val_ids if c.startswith("brain_")]
    heads = [c for c in val_ids if c.startswith("head_")]
    assert crops and heads  # validated on both fields
    return merge_cohorts([make_sample("brain", out / "brain", only=crops),
                          make_sample("brain", out / "head", field="whole", only=heads)], name="brain-zoo")


#: Final validation Dice as napari_fairseg/models/bundled/README.md states it (3 decimals).
BUNDLED_README_DICE = {"brain": (0.785, {"Group 1": 0.732, "Group 2": 0.839}),
                       "fundus": (0.964, {"Asian": 0.978, "Black": 0.936, "White": 0.969})}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_validation_dice_is_recomputed_from_the_regenerated_split(name, request):
    """The recorded Dice is recomputed, not read back: the validation split rebuilt from the
    checkpoint's stored settings, predicted by the inference code, scored by MONAI's DiceMetric.

    Tolerance 1e-4: prediction here runs on the CPU, as training's validation did, so a
    difference means other weights, another split, other preprocessing or another Dice,
    not rounding (one flipped voxel of the smallest brain structure moves Dice by ~1e-3).
    """
    import pandas as pd
    from monai.metrics import DiceMetric

    from napari_fairseg.inference import InferenceConfig, Predictor, predict_pool_job
    from napari_fairseg.progress import run_job
    from napari_fairseg.training.trainer import TrainConfig, split_train_val

    cohort = request.getfixturevalue("zoo_brain_cohort") if name == "brain" else request.getfixturevalue("fundus")
    ck = load_checkpoint(bundled_checkpoint(name))
    stored = TrainConfig(**json.loads(ck.meta["train_config"]))
    group = ck.meta["group_attribute"]
    if name == "fundus":  # the split rebuilt from the stored settings is the one recorded
        train_ids, val_ids = split_train_val(cohort, group, val_fraction=stored.val_fraction, seed=stored.seed)
        assert val_ids == ck.meta["val_ids"] and len(train_ids) == ck.meta["n_train"]
    else:  # rebuilding the split needs every whole head; the recorded one is used
        val_ids = ck.meta["val_ids"]
    assert (ck.meta["n_train"], len(val_ids)) == {"brain": (24, 8), "fundus": (30, 10)}[name]
    result = run_job(predict_pool_job(cohort, Predictor.from_checkpoint(
        ck, InferenceConfig(device="cpu", uncertainty="none")), val_ids, keep=True))
    dice = DiceMetric(include_background=True, reduction="none")
    per_case = {}
    for cid in val_ids:
        pred = torch.from_numpy(result.predictions[cid].label.astype(np.int64))
        truth = torch.from_numpy(load_case(cohort, cid).label.astype(np.int64))

        def channels(lab):
            return torch.stack([torch.isin(lab, torch.tensor(v)) for v in ck.classes.values()])[None].float()

        per_case[cid] = float(dice(channels(pred), channels(truth)).nanmean())  # mean over the classes
    groups = cohort.cases.set_index("case_id").loc[val_ids, group]
    by_group = pd.Series(per_case).groupby(groups).mean().to_dict()
    overall = float(np.mean(list(per_case.values())))
    assert overall == pytest.approx(ck.meta["val_dice"], abs=1e-4)
    log = pd.read_csv(bundled_checkpoint(name).with_name(bundled_checkpoint(name).stem + ".log.csv")).iloc[-1]
    assert log["epoch"] == ck.meta["epoch"] and log["val_dice"] == pytest.approx(overall, abs=1e-4)
    assert by_group == pytest.approx({g: log[f"val_dice[{g}]"] for g in by_group}, abs=1e-4)
    readme_overall, readme_groups = BUNDLED_README_DICE[name]
    assert overall == pytest.approx(readme_overall, abs=5e-4) and by_group == pytest.approx(readme_groups, abs=5e-4)
