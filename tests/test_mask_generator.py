"""Seed 003's mask generator on the fundus sample: the job, its file, sampling, bad inputs."""

import numpy as np
import pytest
import torch

from napari_fairseg.data.manifest import Cohort
from napari_fairseg.errors import Cancelled, InputDataError
from napari_fairseg.progress import run_job
from napari_fairseg.training.mask_generator import (
    MaskGeneratorConfig,
    load_mask_generator,
    mask_generator_job,
    sample_masks,
)

FAST = MaskGeneratorConfig(steps=30, batch_size=8, width=16, n_points=128)


def test_the_job_trains_writes_and_samples_per_group(tmp_path, fundus):
    events = []
    result = run_job(mask_generator_job(fundus, "race", FAST, out=tmp_path / "g.pt"), on_progress=events.append)
    assert result["groups"] == ["Asian", "Black", "White"] and result["shape"] == (128, 128)
    assert [e.stage for e in events].count("train") == 30 and events[-1].done == 30
    assert len(result["losses"]) == 30 and np.isfinite(result["losses"]).all()
    model, meta = load_mask_generator(tmp_path / "g.pt")
    assert meta["n_cases"] == {"Asian": 8, "Black": 9, "White": 23} and meta["attribute"] == "race"
    with torch.no_grad():
        x = torch.randn(2, 128, 3)
        t, g = torch.tensor([5, 50]), torch.tensor([0, 2])
        assert torch.equal(model(x, t, g), result["model"](x, t, g))
    masks = sample_masks(model, meta, "Black", 3, seed=0)
    assert masks.shape == (3, 128, 128) and set(np.unique(masks)) <= {0, 1, 2}
    assert not ((masks == 2) & (masks < 1)).any()
    np.testing.assert_array_equal(masks, sample_masks(model, meta, "Black", 3, seed=0))  # seeded
    assert ((masks >= 1).sum(axis=(1, 2)) > 0).all()
    with pytest.raises(InputDataError, match="not one the generator learned"):
        sample_masks(model, meta, "Martian", 1)
    for kw in ({"n": 0}, {"n": 1, "seed": -1}, {"n": 1, "seed": 2**64}):
        with pytest.raises(ValueError):
            sample_masks(model, meta, "Black", **kw)


def test_cancel_writes_nothing(tmp_path, fundus):
    with pytest.raises(Cancelled):
        run_job(mask_generator_job(fundus, "race", FAST, out=tmp_path / "g.pt"),
                should_cancel=lambda: True)
    assert not list(tmp_path.iterdir())


def test_bad_inputs_get_one_line(tmp_path, fundus, tiny_brain):
    with pytest.raises(InputDataError, match="3D volumes") as err:
        run_job(mask_generator_job(tiny_brain, "group", FAST))
    assert len(str(err.value).splitlines()) == 1
    one = Cohort(fundus.cases.assign(site="A"), fundus.kind, fundus.classes, "one", source=fundus.source)
    with pytest.raises(InputDataError, match="'site' has 1 group"):
        run_job(mask_generator_job(one, "site", FAST))
    with pytest.raises(InputDataError, match="too few labelled training masks.*Asian has 8"):
        run_job(mask_generator_job(fundus, "race", MaskGeneratorConfig(steps=1, min_cases=9)))
    with pytest.raises(InputDataError, match="not in the cohort"):
        run_job(mask_generator_job(fundus, "blood_type", FAST))
    for name, payload in (("junk.pt", b"not a checkpoint"), ):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(InputDataError, match="not a readable mask generator"):
            load_mask_generator(tmp_path / name)
    torch.save({"format": "napari-fairseg-mask-generator", "meta": "{}", "state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(InputDataError, match="not a usable mask generator: groups"):
        load_mask_generator(tmp_path / "empty.pt")


def test_hostile_generator_files_are_refused_before_they_cost_anything(tmp_path, fundus):
    import json
    import os

    run_job(mask_generator_job(fundus, "race", FAST, out=tmp_path / "g.pt"))
    good = torch.load(tmp_path / "g.pt", weights_only=True)

    class Code:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    torch.save({"format": "napari-fairseg-mask-generator", "x": Code()}, tmp_path / "code.pt")
    with pytest.raises(InputDataError, match="refused to load") as err:
        load_mask_generator(tmp_path / "code.pt")
    assert "weights_only set to False" not in str(err.value) and not (tmp_path / "ran").exists()
    meta = json.loads(good["meta"])
    for change, match in ((lambda m: m["config"].update(n_points=10**9), "n_points"),
                          (lambda m: m.update(shape=[10**6, 10**6]), "mask shape"),
                          (lambda m: m.update(shape=[-5, 10]), "mask shape"),
                          (lambda m: m.pop("shape"), "mask shape"),
                          (lambda m: m.update(z0=0), "z0"),
                          (lambda m: m.update(groups="abc"), "groups"),
                          (lambda m: m.update(groups=["A", "A", "B"]), "groups"),
                          (lambda m: m["config"].update(n_points="64"), "n_points")):
        bad = json.loads(json.dumps(meta))
        change(bad)
        torch.save({**good, "meta": json.dumps(bad)}, tmp_path / "bad.pt")
        with pytest.raises(InputDataError, match=match):
            load_mask_generator(tmp_path / "bad.pt")
    torch.save({**good, "state_dict": {k: v[:1] for k, v in good["state_dict"].items()}}, tmp_path / "shape.pt")
    with pytest.raises(InputDataError, match="size mismatch for"):
        load_mask_generator(tmp_path / "shape.pt")
