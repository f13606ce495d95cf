"""`fairseg adapt` (seed 002, UUDS): the user's path, bad inputs, cancel and resume, the direction."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_fairseg.cli import main
from napari_fairseg.errors import Cancelled, InputDataError
from napari_fairseg.models.checkpoint import load_checkpoint
from napari_fairseg.progress import run_job
from napari_fairseg.training.adapt import adapt_job, run_cohort
from napari_fairseg.training.trainer import TrainConfig, model_config_for, train_job, validate

from .conftest import write_domain

FAST = {"device": "cpu", "lr": 1e-2, "augment": False}


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    return write_domain(root / "source", domain="source"), write_domain(root / "target", domain="target")


def _cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_the_run_cohort_never_carries_target_labels(domains):
    source, target = domains
    run = run_cohort(source, target)
    pool = run.cases[run.cases["split"] == "pool"]
    assert sorted(pool["case_id"]) == sorted(target.cases.loc[target.cases["split"] == "train", "case_id"])
    assert pool["label"].isna().all()
    assert set(run.cases.loc[run.cases["split"] != "pool", "split"]) == {"train", "val"}  # no source test cases
    assert run.name == f"{source.name}→{target.name}"


def test_bad_pairs_stop_with_one_clear_line(tmp_path, domains, capsys, tiny_brain):
    source, target = domains
    s, t = source.source.parent, target.source.parent  # the folders, as a user types them
    for args, match in (
            ((s, s), "same cohort"),
            ((s, tiny_brain.source), "3D with 1 channel"),
    ):
        code, err = _cli(capsys, "adapt", *args, "--out", tmp_path / "a.pt", "--epochs", "1")
        assert code == 2 and match in err and len(err.splitlines()) == 1, err
    # a source without labels
    unlabelled = pd.read_csv(s / "manifest.csv").assign(label="")
    (tmp_path / "nolabels").mkdir()
    for f in s.glob("*.png"):
        (tmp_path / "nolabels" / f.name).write_bytes(f.read_bytes())
    unlabelled.to_csv(tmp_path / "nolabels" / "manifest.csv", index=False)
    code, err = _cli(capsys, "adapt", tmp_path / "nolabels" / "manifest.csv", t, "--out", tmp_path / "a.pt")
    assert code == 2 and "no labelled training cases" in err and len(err.splitlines()) == 1, err
    # three-channel target against one-channel source
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb / "c.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(rgb / "c_mask.png")
    pd.DataFrame([{"case_id": "c", "image": "c.png", "label": "c_mask.png", "split": "train"}]).to_csv(
        rgb / "manifest.csv", index=False)
    code, err = _cli(capsys, "adapt", s, rgb / "manifest.csv", "--out", tmp_path / "a.pt")
    assert code == 2 and "3 channel(s)" in err and len(err.splitlines()) == 1, err
    code, err = _cli(capsys, "adapt", s, t, "--out", tmp_path / "a.pt", "--weights", "1,1")
    assert code == 2 and "--weights takes 4 numbers" in err
    for weights in ("1,inf,1,1", "0,0,0,0"):
        code, err = _cli(capsys, "adapt", s, t, "--out", tmp_path / "a.pt", "--weights", weights)
        assert code == 2 and "uuds_weights must be four finite weights" in err, err
    code, err = _cli(capsys, "adapt", s, t, "--out", tmp_path / "a.pt", "--chi=-1")
    assert code == 2 and "chi" in err
    # the bundled names resolve (this 2D cohort does not fit the 3D brain model: refused for that)
    code, err = _cli(capsys, "adapt", s, t, "--out", tmp_path / "a.pt", "--from", "brain")
    assert code == 2 and "not found" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "a.pt").exists()


def test_adapt_cli_writes_a_checkpoint_that_predict_uses(tmp_path, domains, capsys):
    source, target = domains
    code, err = _cli(capsys, "train", source.source.parent, "--out", tmp_path / "src.pt", "--epochs", "1", "--network",
                     "unet", "--features", "4,8", "--device", "cpu")
    assert code == 0, err
    code, err = _cli(capsys, "adapt", source.source.parent, target.source.parent, "--from", tmp_path / "src.pt", "--out",
                     tmp_path / "ad.pt", "--epochs", "2", "--device", "cpu", "--width", "8")
    assert code == 0, err
    ckpt = load_checkpoint(tmp_path / "ad.pt")
    uuds = ckpt.config.extra["uuds"]
    assert (uuds["source"], uuds["target"]) == (source.name, target.name) and ckpt.meta["epoch"] == 2
    log = pd.read_csv(tmp_path / "ad.log.csv")
    assert {"supervised_loss", "pseudo_loss", "dd_loss", "dm_loss", "contrast_loss", "identity_loss",
            "val_dice"} <= set(log.columns)
    code, err = _cli(capsys, "predict", target.source.parent, "--model", tmp_path / "ad.pt", "--out", tmp_path / "pred",
                     "--device", "cpu")
    assert code == 0, err
    assert len(list((tmp_path / "pred").glob("target_*"))) == len(target)
    # --out never overwrites the model it starts from
    before = (tmp_path / "src.pt").read_bytes()
    code, err = _cli(capsys, "adapt", source.source.parent, target.source.parent, "--from", tmp_path / "src.pt",
                     "--out", tmp_path / "src.pt", "--epochs", "1")
    assert code == 2 and "overwrite" in err and (tmp_path / "src.pt").read_bytes() == before
    # resuming asks for the interrupted run's options
    code, err = _cli(capsys, "adapt", source.source.parent, target.source.parent, "--resume", tmp_path / "ad.pt",
                     "--out", tmp_path / "ad.pt", "--epochs", "3", "--width", "16", "--device", "cpu")
    assert code == 2 and "resume needs the interrupted run's cohorts and network options" in err, err
    # an adapted model is not adapted again
    code, err = _cli(capsys, "adapt", source.source.parent, target.source.parent, "--from", tmp_path / "ad.pt", "--out",
                     tmp_path / "again.pt", "--epochs", "1")
    assert code == 2 and "already adapted" in err


def test_cancel_keeps_the_last_complete_epoch_and_resume_continues(tmp_path, domains):
    source, target = domains
    mc = model_config_for(source, network="unet", features=(4, 8))
    config = TrainConfig(epochs=3, batch_size=4, seed=0, **FAST)
    seen = []
    with pytest.raises(Cancelled):
        run_job(adapt_job(source, target, config, model_config=mc, out=tmp_path / "a.pt"), on_progress=seen.append,
                should_cancel=lambda: sum(e.stage == "epoch" for e in seen) == 1 and seen[-1].stage == "train")
    assert load_checkpoint(tmp_path / "a.pt").meta["epoch"] == 1
    start = load_checkpoint(tmp_path / "a.pt").meta["uuds_start"]
    result = run_job(adapt_job(source, target, config, out=tmp_path / "a.pt", resume=tmp_path / "a.pt"))
    assert list(result.log["epoch"]) == [1, 2, 3]
    assert load_checkpoint(tmp_path / "a.pt").meta["uuds_start"] == start  # chosen once, kept on resume
    with pytest.raises(InputDataError, match="not an adaptation run"):
        plain = run_job(train_job(source, mc, TrainConfig(epochs=1, **FAST), out=tmp_path / "p.pt"))
        assert plain.checkpoint
        run_job(adapt_job(source, target, config, resume=tmp_path / "p.pt"))


def _target_dice(model, target) -> float:
    """Mean test Dice on ``target`` of a checkpoint (a path or a run's result)."""
    from napari_fairseg.inference.predict import Predictor

    ids = target.cases.loc[target.cases["split"] == "test", "case_id"].tolist()
    predictor = Predictor.from_checkpoint(load_checkpoint(getattr(model, "checkpoint", model)))
    return float(validate(predictor, target, ids)["dice"].mean())


@pytest.fixture(scope="module")
def adapted_pair(tmp_path_factory, domains):
    """A source model (30 epochs), its UUDS adaptation (15 epochs) and, for a fair lower bound,
    the source model trained 15 epochs more on the source alone (same learning rate)."""
    source, target = domains
    out = tmp_path_factory.mktemp("adapted")
    mc = model_config_for(source, network="unet", features=(8, 16))
    src = run_job(train_job(source, mc, TrainConfig(epochs=30, batch_size=4, seed=0, **FAST), out=out / "s.pt"))
    more = TrainConfig(epochs=15, batch_size=4, seed=0, **{**FAST, "lr": 1e-3})
    longer = run_job(train_job(source, config=more, init=out / "s.pt", out=out / "s45.pt"))
    adapted = run_job(adapt_job(source, target, more, init=out / "s.pt", out=out / "a.pt"))
    return src, longer, adapted


def _prepared(cohort, pipeline, split):
    import torch

    from napari_fairseg.data.pipeline import prepare

    ids = cohort.cases.loc[cohort.cases["split"] == split, "case_id"].tolist()
    return torch.stack([torch.as_tensor(prepare(cohort, pipeline, c)["image"]).as_subclass(torch.Tensor) for c in ids])


def test_adaptation_keeps_the_source_task_and_moves_translations_to_the_source_domain(domains, adapted_pair):
    """What the losses do measurably: the source task is kept (its validation Dice does not
    drop); translated target images' intensities lie closer to the source's than the target's
    own (L_DM), and the translation changes them; Eq. 1 put the domain prompt nearer the source's
    domain features than the target's; the ramp's target starts as is (no inversion)."""
    import torch

    from napari_fairseg.data.pipeline import Pipeline
    from napari_fairseg.training.adaptation import distribution_loss

    source, target = domains
    src, _, adapted = adapted_pair
    assert adapted.log["val_dice"].iloc[-1] >= src.log["val_dice"].iloc[-1] - 0.02
    assert adapted.meta["uuds_start"]["gain"] == [1.0]
    pipeline = Pipeline.from_json(adapted.meta["pipeline"])
    xt, xs = _prepared(target, pipeline, "test"), _prepared(source, pipeline, "val")
    net = adapted.model.eval()
    with torch.no_grad():
        translated, _, g_t = net.translate(xt)
        _, _, g_s = net.translate(xs)
        assert float(distribution_loss(translated, xs)) < 0.7 * float(distribution_loss(xt, xs))
        assert float((translated - xt).abs().mean()) > 0.05
        prompt = net.adapt.prompt
        dist = lambda g: float((1 - torch.nn.functional.cosine_similarity(g, prompt[None])).mean())  # noqa: E731
        assert dist(g_s) < dist(g_t) - 0.1


def test_adaptation_raises_target_dice_over_source_only(domains, adapted_pair):
    """The direction seed 002 promises, on a small shift (an intensity ramp and a dimmer disc)
    within a CI budget: above the source model trained as long on the source alone."""
    _, target = domains
    src, longer, adapted = adapted_pair
    lower = max(_target_dice(src, target), _target_dice(longer, target))
    assert _target_dice(adapted, target) > lower + 0.10


def test_an_inverted_target_starts_inverted_and_is_segmented(tmp_path, domains, adapted_pair, capsys):
    """Contrast polarity (T1 → T2) is what the smooth translation cannot learn by descent: the
    run starts the target inverted, says so, and segments it where the source model finds ~nothing."""
    source, _ = domains
    src, _, _ = adapted_pair
    inverted = write_domain(tmp_path / "inverted", domain="inverted")
    before = _target_dice(src, inverted)
    code = main(["adapt", str(source.source.parent), str(inverted.source.parent), "--from", str(src.checkpoint),
                 "--out", str(tmp_path / "inv.pt"), "--epochs", "2", "--lr", "1e-3", "--batch-size", "4",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "target contrast inverted before translation (channel 0): its inverted intensities" in out, out
    ckpt = load_checkpoint(tmp_path / "inv.pt")
    assert ckpt.meta["uuds_start"]["gain"] == [-1.0]
    # the record of what inputs to expect (prediction's domain warnings) is the target's
    from napari_fairseg.inference.domain import cohort_geometry

    pool = inverted.cases.loc[inverted.cases["split"] == "train", "case_id"].tolist()
    assert ckpt.meta["training_geometry"]["intensity"] == cohort_geometry(inverted, pool)["intensity"]
    after = _target_dice(tmp_path / "inv.pt", inverted)
    assert before < 0.2 and after > before + 0.5, (before, after)
    # validation runs on the source's cases without the target's inversion: the source task's figure
    log = pd.read_csv(tmp_path / "inv.log.csv")
    assert log["val_dice"].iloc[-1] >= src.log["val_dice"].iloc[-1] - 0.05, (log, src.log)
    # the user can keep the contrast; fine-tuning an adapted model on labels alone is refused in one line
    code = main(["adapt", str(source.source.parent), str(inverted.source.parent), "--from", str(src.checkpoint),
                 "--out", str(tmp_path / "kept.pt"), "--epochs", "1", "--polarity", "as-is", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and load_checkpoint(tmp_path / "kept.pt").meta["uuds_start"]["gain"] == [1.0]
    assert "target contrast kept as is: as --polarity as-is asked (channel 0: L_DM" in out, out
    code, err = _cli(capsys, "adapt", source.source.parent, inverted.source.parent, "--resume", tmp_path / "kept.pt",
                     "--out", tmp_path / "kept.pt", "--epochs", "2", "--device", "cpu")
    assert code == 2 and "changed: uuds_polarity 'as-is' → 'auto'" in err and len(err.splitlines()) == 1, err
    code, err = _cli(capsys, "train", inverted.source.parent, "--init", tmp_path / "inv.pt", "--out",
                     tmp_path / "ft.pt", "--epochs", "1", "--device", "cpu")
    assert code == 2 and "target cases beside every batch" in err and len(err.splitlines()) == 1, err
    code, err = _cli(capsys, "adapt", source.source.parent, inverted.source.parent, "--from", src.checkpoint,
                     "--out", tmp_path / "p.pt", "--translation", "prompt", "--no-domain-prompt")
    assert code == 2 and "needs the domain prompt" in err and len(err.splitlines()) == 1, err
