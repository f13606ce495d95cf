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
    assert meta["n_cases"] == {"Asian": 12, "Black": 14, "White": 34} and meta["attribute"] == "race"
    with torch.no_grad():
        x = torch.randn(2, 128, 3)
        t, g = torch.tensor([5, 50]), torch.tensor([0, 2])
        assert torch.equal(model(x, t, g), result["model"](x, t, g))
    masks = sample_masks(model, meta, "Black", 3, seed=0)
    assert masks.shape == (3, 128, 128) and set(np.unique(masks)) <= {0, 1, 2}
    assert not ((masks == 2) & (masks < 1)).any()
    np.testing.assert_array_equal(masks, sample_masks(model, meta, "Black", 3, seed=0))  # seeded
    with pytest.raises(InputDataError, match="not one the generator learned"):
        sample_masks(model, meta, "Martian", 1)


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
    with pytest.raises(InputDataError, match="too few labelled masks.*Asian has 12"):
        run_job(mask_generator_job(fundus, "race", MaskGeneratorConfig(steps=1, min_cases=13)))
    with pytest.raises(InputDataError, match="not in the cohort"):
        run_job(mask_generator_job(fundus, "blood_type", FAST))
    for name, payload in (("junk.pt", b"not a checkpoint"), ):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(InputDataError, match="not a readable mask generator"):
            load_mask_generator(tmp_path / name)
    torch.save({"format": "napari-fairseg-mask-generator", "meta": "{}", "state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(InputDataError, match="not a readable mask generator"):
        load_mask_generator(tmp_path / "empty.pt")
