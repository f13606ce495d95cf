"""Seed 003 as a workflow: the image generator, `fairseg synthesize`, the synthetic flag and
equal-scale training with synthetic cases."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_fairseg.cli import main
from napari_fairseg.data.manifest import Cohort, read_manifest, write_manifest
from napari_fairseg.data.points import cup_inside_disc, cup_to_disc_ratio
from napari_fairseg.errors import Cancelled, InputDataError
from napari_fairseg.models.image_diffusion import (
    condition,
    image_denoiser,
    image_loss,
    sample_images,
    train_scheduler,
)
from napari_fairseg.progress import run_job
from napari_fairseg.training.image_generator import (
    ImageGeneratorConfig,
    load_image_generator,
    paint,
)
from napari_fairseg.training.mask_generator import MaskGeneratorConfig
from napari_fairseg.training.objectives import EqualScaleObjective
from napari_fairseg.training.synthesize import synthesize_job, with_synthetic
from napari_fairseg.training.trainer import split_train_val

MASKS = MaskGeneratorConfig(steps=20, batch_size=4, width=16, n_points=64)
IMAGES = ImageGeneratorConfig(size=16, width=8, steps=4, batch_size=2, sample_steps=2)
TINY = ["--mask-steps", "20", "--image-steps", "4", "--size", "16", "--width", "8"]


def _cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, fundus):
    out = tmp_path_factory.mktemp("syn") / "made"
    events = []
    cohort = run_job(synthesize_job(fundus, "race", 3, out, masks=MASKS, images=IMAGES), on_progress=events.append)
    return out, cohort, events


# --------------------------------------------------------------------------- the synthetic flag
def test_the_manifest_flag_is_read_as_a_boolean_and_is_no_attribute(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    cases = pd.DataFrame({"case_id": ["r1", "s1", "s2"], "image": ["a.png"] * 3, "race": ["A", "A", "B"],
                          "synthetic": ["false", "True", 1]})
    cohort = Cohort(cases, "image2d", source=tmp_path / "m.csv")
    assert cohort.synthetic_ids == ["s1", "s2"] and cohort.attributes == ["race"]
    back = read_manifest(write_manifest(cohort, tmp_path / "m.csv"), check_files=False)
    assert back.synthetic_ids == ["s1", "s2"] and back.cases["synthetic"].dtype == bool
    assert Cohort(cases.drop(columns="synthetic"), "image2d").synthetic_ids == []
    with pytest.raises(InputDataError, match="'synthetic' must be true or false.*maybe.*s1"):
        Cohort(cases.assign(synthetic=["no", "maybe", "yes"]), "image2d")


# --------------------------------------------------------------------------- equal-scale lists
def _train(real: dict, made: dict) -> tuple[pd.DataFrame, list[str]]:
    rows = [(f"{g}{i}", g) for g, n in real.items() for i in range(n)]
    syn = [(f"syn-{g}{i}", g) for g, n in made.items() for i in range(n)]
    table = pd.DataFrame(rows + syn, columns=["case_id", "race"])
    return table, [c for c, _ in syn]


def test_equal_scale_fills_small_groups_with_synthetic_cases_and_subsamples_the_largest():
    train, syn = _train({"A": 10, "B": 4, "C": 2}, {"B": 8, "C": 3})
    objective = EqualScaleObjective(train, "race", synthetic=syn)
    assert objective.n_target == 10  # the largest group's real cases, not its synthetic ones
    rng = np.random.default_rng(0)
    counts = objective.plan_counts(rng)
    assert counts.loc["A"].tolist() == [10, 0, 0]
    assert counts.loc["B"].tolist() == [4, 6, 0]  # 6 of its 8 synthetic cases, none twice
    assert counts.loc["C"].tolist() == [2, 8, 0]  # only 3 synthetic: drawn again to fill 8
    plan = objective.epoch_plan(np.random.default_rng(1))
    b = [c for c, _ in plan if c.startswith("syn-B")]
    assert len(b) == len(set(b)) == 6
    assert not any(copy for _, copy in plan)  # synthetic cases are files, not augmented copies

    small = EqualScaleObjective(train, "race", n_target=3, synthetic=syn).plan_counts(rng)
    assert small["real"].tolist() == [3, 3, 2] and small["synthetic"].tolist() == [0, 0, 1]


def test_without_synthetic_cases_a_group_is_filled_by_repeat_sample():
    train, syn = _train({"A": 6, "B": 2}, {"A": 4})
    counts = EqualScaleObjective(train, "race", synthetic=syn).plan_counts(np.random.default_rng(0))
    assert counts.loc["B"].tolist() == [2, 0, 4] and counts.loc["A"].tolist() == [6, 0, 0]
    only_made = pd.DataFrame({"case_id": ["s1", "s2"], "race": ["A", "B"]})
    with pytest.raises(InputDataError, match="needs real training cases"):
        EqualScaleObjective(only_made, "race", synthetic=["s1", "s2"])


# --------------------------------------------------------------------------- the image model
def test_condition_one_hot_and_the_loss_reaches_every_weight():
    masks = torch.tensor([[[0, 1], [2, 1]]])
    np.testing.assert_array_equal(condition(masks)[0].argmax(0).numpy(), masks[0].numpy())
    assert condition(masks).sum(1).eq(1).all()
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        condition(masks[0])
    torch.manual_seed(0)
    model, sched = image_denoiser(1, 2, 8), train_scheduler()
    loss = image_loss(model, sched, torch.rand(2, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (2, 8, 8)), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="multiple of 8"):
        image_denoiser(1, 2, 12)


def test_the_ddim_loop_paints_what_a_tiny_model_learned():
    """Mask classes of intensity −0.8 / 0 / +0.8: after 200 steps, MONAI's DDIM loop paints
    background < rim < cup where the condition says (an untrained model does not)."""
    g = torch.Generator().manual_seed(0)
    s = 8
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    masks = []
    for _ in range(16):
        cy, cx = torch.randint(3, 5, (2,), generator=g)
        r = (yy - cy) ** 2 + (xx - cx) ** 2
        masks.append((r <= 6).long() + (r <= 1).long())
    m, groups = torch.stack(masks), torch.arange(16) % 2
    x = (torch.tensor([-0.8, 0.0, 0.8])[m] + 0.3 * groups[:, None, None] - 0.15)[:, None]
    torch.manual_seed(0)
    model, sched = image_denoiser(1, 2, 8), train_scheduler()
    opt = torch.optim.Adam(model.parameters(), 3e-3)

    def ordered(y):
        bg, rim, cup = (float(y[:, 0][m == k].mean()) for k in range(3))
        return cup - rim > 0.04 and rim - bg > 0.15

    assert not ordered(sample_images(model, m, groups, channels=1, steps=10, generator=torch.Generator().manual_seed(1)))
    for _ in range(200):
        pick = torch.randint(0, 16, (8,), generator=g)
        loss = image_loss(model, sched, x[pick], m[pick], groups[pick], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = sample_images(model, m, groups, channels=1, steps=10, generator=torch.Generator().manual_seed(1))
    assert out.shape == (16, 1, s, s) and out.abs().max() <= 1
    assert ordered(out)


# --------------------------------------------------------------------------- synthesize
def test_synthesize_writes_flagged_cases_in_the_cohorts_own_format(synthesized, fundus):
    out, cohort, events = synthesized
    assert len(cohort) == 9 and cohort.synthetic_ids == cohort.case_ids and cohort.kind == fundus.kind
    assert cohort.cases.groupby("race").size().to_dict() == {"Asian": 3, "Black": 3, "White": 3}
    assert set(cohort.cases["split"]) == {"train"} and cohort.classes == fundus.classes
    stages = {e.stage for e in events}
    assert {"masks: train", "images: train", "synthesize"} <= stages
    with np.load(out / f"{cohort.case_ids[0]}.npz") as data:
        assert set(data.files) == {"slo_fundus", "disc_cup_mask"}
        assert data["slo_fundus"].dtype == np.uint8 and data["slo_fundus"].shape == (128, 128)
        assert set(np.unique(data["disc_cup_mask"])) <= {0, -1, -2}  # FairSeg's codes, as the real files
    from napari_fairseg.data.arrays import load_case

    label = load_case(cohort, cohort.case_ids[0]).label
    assert set(np.unique(label)) <= {0, 1, 2} and (label > 0).any()
    model, meta = load_image_generator(out / "image_generator.pt")
    assert meta["groups"] == ["Asian", "Black", "White"] and meta["channels"] == 1
    assert paint(model, meta, label[None], "Black").shape == (1, 1, 128, 128)


def test_synthesize_resumes_with_the_same_cases(synthesized, fundus, tmp_path):
    import shutil

    made, cohort, _ = synthesized
    out = shutil.copytree(made, tmp_path / "copy")  # the module's folder stays as it was
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    more = run_job(synthesize_job(fundus, "race", 4, out, masks=MASKS, images=IMAGES))
    assert len(more) == 12
    assert all((out / n).stat().st_mtime_ns == t for n, t in before.items())  # kept, not redrawn
    # stopped early, a run asking for more keeps every case written before in the manifest
    seen = []
    with pytest.raises(Cancelled):
        run_job(synthesize_job(fundus, "race", 12, out, masks=MASKS, images=IMAGES), on_progress=seen.append,
                should_cancel=lambda: sum(e.stage == "synthesize" for e in seen) >= 9)
    assert len(read_manifest(out / "manifest.csv")) >= 12
    # a cancelled run keeps a manifest of what it wrote; finishing it equals one uninterrupted run
    fresh = tmp_path / "again"
    seen = []
    with pytest.raises(Cancelled):
        run_job(synthesize_job(fundus, "race", 3, fresh, masks=MASKS, images=IMAGES), on_progress=seen.append,
                should_cancel=lambda: sum(e.stage == "synthesize" for e in seen) >= 4)
    assert len(read_manifest(fresh / "manifest.csv")) == 3
    run_job(synthesize_job(fundus, "race", 3, fresh, masks=MASKS, images=IMAGES))
    for cid in cohort.case_ids:
        with np.load(out / f"{cid}.npz") as a, np.load(fresh / f"{cid}.npz") as b:
            np.testing.assert_array_equal(a["slo_fundus"], b["slo_fundus"])
            np.testing.assert_array_equal(a["disc_cup_mask"], b["disc_cup_mask"])


def test_synthetic_cases_train_but_are_never_validated_on(synthesized, fundus):
    out, cohort, _ = synthesized
    merged = with_synthetic(fundus, out)
    assert len(merged) == len(fundus) + len(cohort) and sorted(merged.synthetic_ids) == sorted(cohort.case_ids)
    assert "synthetic" not in merged.attributes
    train, val = split_train_val(merged, "race", val_fraction=0.5, seed=0)
    assert not set(val) & set(merged.synthetic_ids) and set(merged.synthetic_ids) <= set(train)
    with pytest.raises(InputDataError, match="not a synthetic cohort"):
        with_synthetic(fundus, fundus)


def test_train_with_synthetic_cases_reports_the_equal_scale_plan(synthesized, fundus, capsys, tmp_path):
    out, _, _ = synthesized
    code, printed, err = _cli(capsys, "train", fundus.source, "--synthetic", out, "--fairness", "equal-scale",
                              "--group-attribute", "race", "--epochs", "1", "--features", "4,8", "--device", "cpu",
                              "--out", tmp_path / "m.pt")
    assert code == 0, err
    import re

    n = int(re.search(r"equal scale: (\d+) cases per group", printed).group(1))
    plan = {g: tuple(map(int, v)) for g, *v in
            re.findall(r"(\w+): (\d+) real, (\d+) synthetic \(3 generated cases\), (\d+) repeats", printed)}
    assert sorted(plan) == ["Asian", "Black", "White"] and all(sum(v) == n for v in plan.values())
    assert plan["White"] == (n, 0, 0)  # the largest group: all its real cases, nothing generated
    assert plan["Asian"][1] > 3 and plan["Asian"][2] == 0  # filled with its 3 generated cases, drawn again
    assert "too few synthetic cases for Asian, Black" in printed
    code, printed, err = _cli(capsys, "train", fundus.source, "--synthetic", fundus.source, "--epochs", "1",
                              "--out", tmp_path / "n.pt")
    assert code != 0 and "not a synthetic cohort" in err and len(err.splitlines()) == 1


def test_synthesize_bad_inputs_stop_with_one_line(capsys, fundus, tiny_brain, tmp_path):
    def refused(*argv):
        code, _, err = _cli(capsys, "synthesize", *argv, *TINY)
        assert code != 0 and len(err.splitlines()) == 1, err
        return err

    one = tmp_path / "one.csv"
    write_manifest(Cohort(fundus.cases.assign(site="A"), fundus.kind, fundus.classes, "one", source=one), one)
    assert "'site' has 1 group" in refused(one, "--attribute", "site", "--per-group", "1", "--out", tmp_path / "a")
    assert "too few labelled training masks" in refused(fundus.source, "--attribute", "language", "--per-group", "1",
                                               "--out", tmp_path / "b")
    brain = tmp_path / "brain.csv"
    write_manifest(tiny_brain, brain)
    assert "FairSeg npz" in refused(brain, "--attribute", "group", "--per-group", "1", "--out", tmp_path / "c")
    assert "continuous" in refused(fundus.source, "--attribute", "age", "--per-group", "1", "--out", tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "thesis.docx").write_text("mine")
    assert "did not write" in refused(fundus.source, "--attribute", "race", "--per-group", "1", "--out", tmp_path / "e")
    assert "--per-group" in refused(fundus.source, "--attribute", "race", "--per-group", "0", "--out", tmp_path / "f")
    assert (tmp_path / "e" / "thesis.docx").read_text() == "mine"


def test_hostile_image_generator_files_are_refused(tmp_path, synthesized):
    import json

    out, _, _ = synthesized
    payload = torch.load(out / "image_generator.pt", weights_only=True)
    for name, change in {"channels": {"channels": 10**9}, "range": {"low": 5.0, "high": float("nan")},
                         "groups": {"groups": ["A"]}, "width": {"config": {"width": 12}}}.items():
        meta = {**json.loads(payload["meta"]), **change}
        torch.save({**payload, "meta": json.dumps(meta)}, tmp_path / f"{name}.pt")
        with pytest.raises(InputDataError, match="not a usable image generator"):
            load_image_generator(tmp_path / f"{name}.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(InputDataError, match="not a readable image generator"):
        load_image_generator(tmp_path / "junk.pt")


def test_mask_plausibility_measures():
    label = np.zeros((10, 10), int)
    label[2:8, 2:8] = 1
    label[4:6, 4:7] = 2
    assert cup_to_disc_ratio(label) == pytest.approx(2 / 6) and cup_inside_disc(label)
    label[4:6, 7:9] = 2  # the cup reaches the background
    assert not cup_inside_disc(label)
    assert np.isnan(cup_to_disc_ratio(np.zeros((4, 4)))) and cup_to_disc_ratio(label.clip(0, 1)) == 0


def test_a_folder_is_resumed_only_from_its_own_run(synthesized, fundus, tmp_path):
    import json
    import shutil

    made, _, _ = synthesized
    # another command's output folder (marked, with its own manifest) is not synthesize's to overwrite
    other = tmp_path / "export"
    other.mkdir()
    (other / ".fairseg-output").write_text("x")
    (other / "manifest.csv").write_text("case_id,image\nmine,a.png\n")
    with pytest.raises(InputDataError, match="did not write"):
        run_job(synthesize_job(fundus, "race", 1, other, masks=MASKS, images=IMAGES))
    assert (other / "manifest.csv").read_text() == "case_id,image\nmine,a.png\n"
    # a generator file changed after the run wrote it is not reused
    copy = shutil.copytree(made, tmp_path / "copy")
    payload = torch.load(copy / "mask_generator.pt", weights_only=True)
    meta = json.loads(payload["meta"])
    torch.save({**payload, "meta": json.dumps({**meta, "shape": [64, 48]})}, copy / "mask_generator.pt")
    with pytest.raises(InputDataError, match="not the one this folder's run wrote"):
        run_job(synthesize_job(fundus, "race", 3, copy, masks=MASKS, images=IMAGES))
    # the same folder name from another cohort (other training cases) is refused
    fewer = Cohort(fundus.cases.iloc[2:], fundus.kind, fundus.classes, fundus.name, source=fundus.source)
    with pytest.raises(InputDataError, match="the cohort's training cases differ"):
        run_job(synthesize_job(fewer, "race", 3, made, masks=MASKS, images=IMAGES))
    with pytest.raises(InputDataError, match="'#' or ';'"):
        run_job(synthesize_job(fundus, "race", 1, tmp_path / "a#b", masks=MASKS, images=IMAGES))
    assert not (tmp_path / "a#b").exists()


def test_train_refuses_synthetic_cases_that_are_not_this_cohorts(synthesized, fundus, tmp_path):
    import shutil

    made, cohort, _ = synthesized
    fewer = Cohort(fundus.cases.iloc[2:], fundus.kind, fundus.classes, fundus.name, source=fundus.source)
    with pytest.raises(InputDataError, match="another version of 'fundus'"):
        with_synthetic(fewer, made)
    renamed = Cohort(fundus.cases, fundus.kind, fundus.classes, "other", source=fundus.source)
    with pytest.raises(InputDataError, match="generated from cohort 'fundus'"):
        with_synthetic(renamed, made)
    martian = shutil.copytree(made, tmp_path / "martian")
    pd.read_csv(martian / "manifest.csv").assign(race="Martian").to_csv(martian / "manifest.csv", index=False)
    with pytest.raises(InputDataError, match="a group the cohort does not have"):
        with_synthetic(fundus, martian)
    leak = shutil.copytree(made, tmp_path / "leak")  # a real test case smuggled in as synthetic
    table = pd.read_csv(leak / "manifest.csv")
    table.loc[0, "image"] = str(fundus.cases.loc[fundus.cases["split"] == "test", "image"].iloc[0])
    table.to_csv(leak / "manifest.csv", index=False)
    with pytest.raises(InputDataError, match="outside its folder"):
        with_synthetic(fundus, leak)


def test_painted_images_keep_the_cohorts_storage_type():
    from napari_fairseg.training.synthesize import _pixels

    img = np.array([[[-3.0, 12.4], [255.6, 300.0]]])
    np.testing.assert_array_equal(_pixels(img, np.dtype(np.uint8)), [[0, 12], [255, 255]])
    assert _pixels(img, np.dtype(np.uint16)).max() == 300
    floats = _pixels(img / 300, np.dtype(np.float32))
    assert floats.dtype == np.float32 and floats.max() == pytest.approx(1.0)
    assert _pixels(np.zeros((3, 2, 2)), np.dtype(np.uint8)).shape == (2, 2, 3)  # colour: channels last
