"""The active-learning round loop, embeddings, the simulated experiment and their commands."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_fairseg.active import Project, RoundConfig, embeddings_job, round_job, wle_group_weights
from napari_fairseg.active.simulate import (
    SimulationConfig,
    delta_reduction,
    initial_set,
    simulate_job,
    summarise,
)
from napari_fairseg.cli import main
from napari_fairseg.data.arrays import load_case
from napari_fairseg.data.manifest import write_manifest
from napari_fairseg.data.readers import open_cohort
from napari_fairseg.errors import InputDataError
from napari_fairseg.models import build_network
from napari_fairseg.models.checkpoint import load_checkpoint
from napari_fairseg.progress import run_job
from napari_fairseg.training import model_config_for

from .conftest import write_toy_cohort

FAST = {"epochs": 3, "first_epochs": 15, "lr": 3e-3, "batch": 2, "device": "cpu", "eval_split": "test"}


@pytest.fixture(scope="module")
def al_cohort(tmp_path_factory):
    """A biased 2D cohort with a pool (train: 10 major, 6 minor) and a held-out test split (4 + 4)."""
    out = tmp_path_factory.mktemp("al_toy")
    toy = write_toy_cohort(out, n_major=10, n_minor=6, val=(4, 4), seed=5)
    toy.cases["split"] = toy.cases["split"].replace({"val": "test"})
    write_manifest(toy, out / "manifest.csv")
    return open_cohort(out / "manifest.csv")


def _oracle(project, cohort, ids):
    for cid in ids:
        project.save_annotation(cid, load_case(cohort, cid).label, author="oracle", source="imported")


def _train_ids(cohort, group, n):
    c = cohort.cases
    return c.loc[(c["split"] == "train") & (c["group"] == group), "case_id"].tolist()[:n]


def test_round_trains_evaluates_suggests_and_records(tmp_path, al_cohort):
    project = Project.create(tmp_path / "p", al_cohort)
    first = _train_ids(al_cohort, "major", 3) + _train_ids(al_cohort, "minor", 1)
    _oracle(project, al_cohort, first)
    cfg = RoundConfig(strategy="wle", **FAST)
    seen = []
    r1 = run_job(round_job(project, cfg), on_progress=seen.append)
    m = r1.metrics
    # its stages in order: train, then evaluate (held-out + labelled cases), score the pool, suggest
    stages = [p.stage for p in seen]
    first_eval = stages.index("evaluate")
    assert first_eval > 0 and "evaluate" not in stages[first_eval + 2:]
    assert [(p.done, p.total) for p in seen[first_eval:first_eval + 2]] == [(0, 12), (12, 12)]
    assert "predict" in stages[first_eval + 2:] and (seen[-1].stage, seen[-1].done, seen[-1].total) == ("suggest", 2, 2)
    assert m["trained"] and m["n_labelled"] == 4 and m["n_pool"] == 12 and m["n_eval"] == 8
    assert m["n_labelled[major]"] == 3 and m["ratio[minor]"] == pytest.approx(0.25)
    # the held-out summary is the hand formula over the per-case table
    ev = r1.evaluation
    assert sorted(ev["case_id"]) == sorted(al_cohort.cases.loc[al_cohort.cases["split"] == "test", "case_id"])
    overall = ev["dice"].mean()
    means = ev.groupby("group")["dice"].mean()
    assert m["dice"] == pytest.approx(overall)
    assert m["delta"] == pytest.approx(sum(abs(overall - means)))
    assert m["essp"] == pytest.approx(overall / (1 + m["delta"]))
    assert m["dice[minor]"] == pytest.approx(means["minor"])
    # WLE weights come from the labelled set's Dice under this round's model
    w = wle_group_weights(r1.labelled_dice, ["major", "minor"])
    assert m["weight[major]"] == pytest.approx(w["major"]) and m["weight[minor]"] == pytest.approx(w["minor"])
    assert list(r1.labelled_dice["case_id"]) == first
    # suggestions: distinct unlabelled pool cases, ranked by score, stored in the project
    s = r1.suggestions
    assert len(s) == 2 and not set(s["case_id"]) & set(first)
    assert set(s["case_id"]) <= set(al_cohort.cases.loc[al_cohort.cases["split"] == "train", "case_id"])
    assert list(s["score"]) == sorted(s["score"], reverse=True)
    stored = project.suggestions()
    assert list(stored["case_id"]) == list(s["case_id"]) and not stored["labelled"].any()
    assert r1.checkpoint == project.root / "models" / "round_0001.pt" and r1.checkpoint.is_file()

    # same labelled set: the model is reused, not retrained
    r2 = run_job(round_job(project, RoundConfig(strategy="entropy", **FAST)))
    assert not r2.metrics["trained"] and r2.checkpoint == r1.checkpoint
    assert r2.metrics["dice"] == pytest.approx(m["dice"])

    # annotate the suggestions: the next round fine-tunes from the previous model
    _oracle(project, al_cohort, s["case_id"])
    assert project.suggestions(r1.round_id)["labelled"].all()
    r3 = run_job(round_job(project, cfg))
    assert r3.metrics["trained"] and r3.metrics["n_labelled"] == 6
    assert load_checkpoint(r3.checkpoint).meta["epoch"] == FAST["epochs"]  # warm start: fine-tuning epochs
    root = project.root
    project.close()
    with Project.open(root) as again:  # everything survives reopening
        rounds = again.rounds()
        assert list(rounds["id"]) == [1, 2, 3] and list(rounds["trained"]) == [True, False, True]
        assert list(rounds["strategy"]) == ["wle", "entropy", "wle"]
        assert rounds["dice"].iloc[2] == pytest.approx(r3.metrics["dice"])
        assert again.checkpoint_path() == r3.checkpoint


def test_round_needs_labels_or_a_model(tmp_path, al_cohort):
    project = Project.create(tmp_path / "p", al_cohort)
    with pytest.raises(InputDataError, match="no labelled case"):
        run_job(round_job(project, RoundConfig(**FAST)))
    with pytest.raises(InputDataError, match="not an attribute"):
        run_job(round_job(project, RoundConfig(group_attribute="ethnicity", **FAST)))
    with pytest.raises(InputDataError, match="split 'pool' has no cases"):
        run_job(round_job(project, RoundConfig(pool_split="pool", **FAST)))
    with pytest.raises(InputDataError, match="another task|input channel|dimension|classes|fit|holds 2D images"):
        run_job(round_job(project, RoundConfig(**FAST), model="brain"))  # a 3D model for a 2D cohort
    with pytest.raises(ValueError, match="strategy must be one of"):
        RoundConfig(strategy="entropy-max")


def test_a_cancelled_round_records_nothing(tmp_path, al_cohort):
    from napari_fairseg.errors import Cancelled

    project = Project.create(tmp_path / "p", al_cohort)
    _oracle(project, al_cohort, _train_ids(al_cohort, "major", 2) + _train_ids(al_cohort, "minor", 2))
    seen = []
    with pytest.raises(Cancelled):
        run_job(round_job(project, RoundConfig(**FAST)), on_progress=seen.append,
                should_cancel=lambda: seen[-1].stage == "epoch")
    assert project.rounds().empty and project.suggestions().empty
    assert project.status()["labelled"].sum() == 4  # the labels are untouched
    r = run_job(round_job(project, RoundConfig(**FAST)))  # and the next attempt runs normally
    assert r.round_id == 1 and r.metrics["trained"]


def test_every_strategy_runs_a_round(tmp_path, al_cohort):
    project = Project.create(tmp_path / "p", al_cohort)
    _oracle(project, al_cohort, _train_ids(al_cohort, "major", 2) + _train_ids(al_cohort, "minor", 2))
    seen = {}
    from napari_fairseg.active import STRATEGIES

    for name in STRATEGIES:
        r = run_job(round_job(project, RoundConfig(strategy=name, mc_passes=2, **FAST)))
        assert len(r.suggestions) == 2 and r.suggestions["case_id"].is_unique, name
        seen[name] = list(r.suggestions["case_id"])
    # the fair-quota family fills equal quotas: one case per group
    for name in ("fair-base", "fair-attr", "fair-poly", "fair-ap"):
        groups = al_cohort.cases.set_index("case_id").loc[seen[name], "group"]
        assert sorted(groups) == ["major", "minor"], name
    assert project.rounds()["trained"].sum() == 1  # one model served every strategy


def test_encoder_embeddings_and_foreign_encoder_files(tmp_path, al_cohort):
    config = model_config_for(al_cohort, network="unet", features=(8, 16, 32))
    torch.manual_seed(0)
    model = build_network(config)
    ids = al_cohort.case_ids[:3]
    emb = run_job(embeddings_job(al_cohort, ids, model=model, config=config))
    assert set(emb) == set(ids) and all(v.shape == (32,) for v in emb.values())  # the bottleneck's width
    again = run_job(embeddings_job(al_cohort, ids, model=model, config=config))
    np.testing.assert_allclose(emb[ids[0]], again[ids[0]])
    assert not np.allclose(emb[ids[0]], emb[ids[1]])
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # hooks removed afterwards
    # encoder files: only FairSeg checkpoints (tests/test_project_safety.py), never code
    for name, why in (("not_an_encoder.pt", "refused to load|not a readable checkpoint"),
                      ("not_an_encoder.pt2", "refused: TorchScript/ExportedProgram"),
                      ("missing.pt", "encoder file not found")):
        bad = tmp_path / name
        if name != "missing.pt":
            bad.write_bytes(b"plain bytes")
        with pytest.raises(InputDataError, match=why):
            run_job(embeddings_job(al_cohort, ids, model=model, config=config, encoder=bad))


def test_two_cycle_simulation_end_to_end_and_resume(tmp_path, al_cohort):
    config = SimulationConfig(strategies=("random", "wle"), seeds=(0,), initial=(2, 2), cycles=2,
                              round=RoundConfig(**FAST))
    first = initial_set(al_cohort, config, 0)
    groups = al_cohort.cases.set_index("case_id").loc[first, "group"]
    assert sorted(groups) == ["major", "major", "minor", "minor"]
    out = tmp_path / "sim"
    table = run_job(simulate_job(al_cohort, config, out))
    assert len(table) == 2 * 3 and list(table["n_labelled"]) == [4, 6, 8] * 2
    # every strategy starts from the same model: identical cycle 0
    c0 = table[table["cycle"] == 0].set_index("strategy")
    assert c0.loc["random", "dice"] == c0.loc["wle", "dice"]
    for strategy in ("random", "wle"):
        with Project.open(out / "projects" / f"{strategy}-seed0") as p:
            st = p.status()
            lab = st[st["labelled"]]
            assert len(lab) == 8 and set(first) <= set(lab["case_id"])
            assert set(p.history()["author"]) == {"oracle"}
            final = table[(table["strategy"] == strategy) & (table["cycle"] == 2)].iloc[0]
            assert final["ratio[major]"] == pytest.approx((lab["group"] == "major").mean())
            for cid in lab["case_id"]:  # the oracle's annotation is the ground truth
                np.testing.assert_array_equal(p.load_annotation(cid), load_case(al_cohort, cid).label)
    on_disk = pd.read_csv(out / "results.csv")
    assert len(on_disk) == 6 and (out / "learning_curves.png").stat().st_size > 10_000
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert summary.loc["wle", "delta_mean"] == pytest.approx(table[(table["strategy"] == "wle")
                                                                   & (table["cycle"] == 2)]["delta"].mean())
    # resume: a complete experiment is not rerun (the projects are left as they are)
    stamp = (out / "projects" / "wle-seed0" / "project.sqlite").stat().st_mtime_ns
    again = run_job(simulate_job(al_cohort, config, out))
    pd.testing.assert_frame_equal(again.reset_index(drop=True), on_disk, check_dtype=False)
    assert (out / "projects" / "wle-seed0" / "project.sqlite").stat().st_mtime_ns == stamp


def test_summary_and_delta_reduction_by_hand():
    t = pd.DataFrame({"strategy": ["wle", "wle", "entropy", "entropy", "wle", "entropy"],
                      "seed": [0, 1, 0, 1, 0, 0], "cycle": [1, 1, 1, 1, 0, 0],
                      "delta": [0.01, 0.03, 0.06, 0.10, 0.5, 0.5], "dice": [0.8, 0.9, 0.7, 0.8, 0.1, 0.1]})
    assert delta_reduction(t) == pytest.approx(1 - 0.02 / 0.08)
    s = summarise(t)
    assert s.loc["entropy", "delta_mean"] == pytest.approx(0.08)
    assert s.loc["wle", "dice_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    with pytest.raises(InputDataError, match="need 2 groups"):
        initial_set(open_cohort_like_three_groups(), SimulationConfig(initial=(1, 1)), 0)


def open_cohort_like_three_groups():
    from napari_fairseg.data.manifest import Cohort

    cases = pd.DataFrame({"case_id": list("abc"), "image": ["x.nii.gz"] * 3, "label": [""] * 3,
                          "split": ["train"] * 3, "group": ["G1", "G2", "G3"]})
    return Cohort(cases, "nifti", {"s": (1,)}, "three")


def test_cli_project_label_suggest_status_export(tmp_path, al_cohort, capsys):
    proj = str(tmp_path / "p")
    assert main(["--quiet", "project", "init", proj, "--cohort", str(al_cohort.source)]) == 0
    assert main(["--quiet", "suggest", proj, *_cli_fast()]) == 2
    assert "no labelled case" in capsys.readouterr().err
    ids = _train_ids(al_cohort, "major", 2) + _train_ids(al_cohort, "minor", 2)
    for cid in ids:
        mask = al_cohort.row(cid)["label"]
        assert main(["--quiet", "label", proj, cid, "--mask", mask, "--author", "ana"]) == 0
    assert main(["--quiet", "label", proj, "nope", "--mask", mask, "--author", "ana"]) == 2
    assert "not in this project" in capsys.readouterr().err
    wrong = tmp_path / "wrong.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(wrong)
    assert main(["--quiet", "label", proj, ids[0], "--mask", str(wrong), "--author", "ana"]) == 2
    assert "wrong.png" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["--quiet", "suggest", proj, "--strategy", "localized", *_cli_fast()]) == 0
    out = capsys.readouterr().out
    assert "round 1: trained on 4 labelled" in out and out.count(" score ") == 2
    assert main(["--quiet", "project", "status", proj]) == 0
    assert "1 round(s)" in capsys.readouterr().out
    assert main(["--quiet", "project", "export", proj, "--out", str(tmp_path / "exp")]) == 0
    exported = open_cohort(tmp_path / "exp" / "manifest.csv")
    labelled = exported.cases[exported.cases["label"].astype(str).str.len() > 0]
    assert sorted(labelled["case_id"]) == sorted(ids)
    np.testing.assert_array_equal(load_case(exported, ids[0]).label, load_case(al_cohort, ids[0]).label)
    hist = pd.read_csv(tmp_path / "exp" / "history.csv")
    assert len(hist) == 4 and set(hist["author"]) == {"ana"}
    assert len(pd.read_csv(tmp_path / "exp" / "suggestions.csv")) == 2


def _cli_fast():
    return ["--batch", "2", "--epochs", "2", "--first-epochs", "5", "--device", "cpu", "--eval-split", "test"]


def test_cli_simulate(tmp_path, al_cohort, capsys):
    out = tmp_path / "sim"
    args = ["--quiet", "simulate", str(al_cohort.source), "--out", str(out), "--strategies", "entropy,wle",
            "--seeds", "0", "--initial", "2,2", "--cycles", "1", "--batch", "2", "--epochs", "2",
            "--first-epochs", "5", "--device", "cpu", "--eval-split", "test"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "final budget (6 labels)" in text and "WLE lowers Δ by" in text
    assert len(pd.read_csv(out / "results.csv")) == 4
    assert main([*args, "--epochs", "3"]) == 2  # the folder holds results of other settings
    assert "other settings (round differ)" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--initial", "2,2,2"]) == 2  # three counts, two groups
    assert "need 3 groups" in capsys.readouterr().err
    assert main(["--quiet", "simulate", "--out", str(out)]) == 2
    assert "give a cohort or a preset" in capsys.readouterr().err
