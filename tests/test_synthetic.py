"""Sample cohorts: deterministic, with the documented group effects, shipped data not stale."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from napari_fairseg.data import load_case, open_cohort
from napari_fairseg.data.synthetic import BIAS, brain_template, make_sample, warp_brain_case

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "fundus"


def test_caudate_label_follows_image_content():
    t1, caudate, affine = brain_template()
    assert 3000 < caudate.sum() < 8000  # mm³ at 1 mm: a plausible caudate
    centroid = (affine @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1])[:3]
    assert centroid[0] < 0  # left hemisphere (RAS)
    # grey-matter intensity inside, darker than the white matter a few mm lateral to it
    inside = t1[caudate].mean()
    assert 0.3 < inside < 0.9


def test_brain_is_deterministic_with_group_metadata(tmp_path):
    kw = dict(n_cases=8, seed=5, shape=(32, 32, 24), spacing=2.0, bias="strong")
    a = make_sample("brain", tmp_path / "a", **kw)
    b = make_sample("brain", tmp_path / "b", **kw)
    for cid in a.case_ids:
        np.testing.assert_array_equal(load_case(a, cid).image, load_case(b, cid).image)
    vol = {cid: load_case(a, cid).label.sum() for cid in a.case_ids}
    g = a.cases.set_index("case_id")["group"]
    assert set(g) == {"Group 1", "Group 2"} and set(a.cases["split"]) == {"train", "test"}
    loc = a.cases.set_index("case_id")["local_deformation_mm"]
    assert (loc[g == "Group 2"] == 0).all() and (loc[g == "Group 1"] != 0).all()
    img = nib.load(a.row(a.case_ids[0])["image"])
    np.testing.assert_allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))
    assert all(v > 0 for v in vol.values())


def test_shipped_fundus_sample_equals_a_fresh_generation(tmp_path):
    fresh = make_sample("fundus", tmp_path / "f", n_cases=60, seed=0)
    shipped = open_cohort(SAMPLE)
    assert shipped.case_ids == fresh.case_ids
    for cid in shipped.case_ids[::7]:
        s, f = load_case(shipped, cid), load_case(fresh, cid)
        np.testing.assert_array_equal(s.image, f.image)
        np.testing.assert_array_equal(s.label, f.label)
    cols = ["race", "gender", "age", "ethnicity", "split"]
    assert shipped.cases[cols].astype(str).equals(fresh.cases[cols].astype(str))


def _template_caudate_on(affine, shape):
    """The undeformed template caudate resampled onto a case's grid (an independent resampling)."""
    _, caudate, t_aff = brain_template()
    m = np.linalg.inv(t_aff) @ affine
    grid = np.indices(shape, dtype=float).reshape(3, -1)
    vox = m[:3, :3] @ grid + m[:3, 3:4]
    return ndimage.map_coordinates(caudate.astype(np.float32), vox, order=1).reshape(shape) > 0.5


@pytest.fixture(scope="module")
def brain_strong_weak(tmp_path_factory):
    """The same 12-case brain cohort (seed 5) under strong and weak bias, with per-case measures."""
    out = {}
    for bias in ("strong", "weak"):
        c = make_sample("brain", tmp_path_factory.mktemp(bias), n_cases=12, seed=5, shape=(32, 32, 24),
                        spacing=2.0, bias=bias)
        rows = []
        for cid in c.case_ids:
            case = load_case(c, cid)
            lab = case.label.astype(bool)
            ref = _template_caudate_on(case.affine, lab.shape)
            rows.append({"case_id": cid, "volume_ratio": lab.sum() / ref.sum(),
                         "dice_to_template": 2 * (lab & ref).sum() / (lab.sum() + ref.sum()), "t1": case.image})
        out[bias] = c.cases.merge(pd.DataFrame(rows), on="case_id")
    return out


def test_brain_group1_caudate_is_deformed_relative_to_group2(brain_strong_weak):
    t = brain_strong_weak["strong"]
    g1, g2 = t[t["group"] == "Group 1"], t[t["group"] == "Group 2"]
    assert len(g1) == len(g2) == 6
    # Group 2: global deformation only (±4 % scale, a few degrees, 2 mm smooth field): the caudate
    # keeps its template volume. Measured (seed 5): 1.01 of the template's volume, Dice 0.73 to it.
    assert 0.85 < g2["volume_ratio"].mean() < 1.15 and g2["dice_to_template"].mean() > 0.6
    # Group 1 adds the local caudate deformation, N(4, 2) mm: its caudate shrinks (measured 0.66)
    # and overlaps the template less (0.57). (Per case the global deformation adds noise of ±15 %,
    # so the link strength → image is checked paired, below.)
    assert g1["volume_ratio"].mean() < g2["volume_ratio"].mean() - 0.2
    assert g1["dice_to_template"].mean() < g2["dice_to_template"].mean() - 0.08


def test_brain_strong_and_weak_bias_differ_by_the_documented_mean(brain_strong_weak):
    strong, weak = brain_strong_weak["strong"], brain_strong_weak["weak"]
    assert strong["group"].tolist() == weak["group"].tolist()
    g1 = strong["group"] == "Group 1"
    # same seed, same normal draws: each Group 1 case's strength differs by μ_strong − μ_weak = 2 mm
    np.testing.assert_allclose(strong.loc[g1, "local_deformation_mm"] - weak.loc[g1, "local_deformation_mm"],
                               BIAS["strong"][0] - BIAS["weak"][0], atol=2e-3)
    assert BIAS == {"strong": (4.0, 2.0), "weak": (2.0, 2.0)}  # README / METHODS §7
    # Group 2 does not see the bias setting at all; Group 1's caudate shrinks more under strong bias
    for a, b in zip(strong.loc[~g1, "t1"], weak.loc[~g1, "t1"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert (strong.loc[g1, "volume_ratio"].to_numpy() < weak.loc[g1, "volume_ratio"].to_numpy()).all()


def test_local_deformation_is_a_local_caudate_displacement_growing_with_strength():
    _, caudate, t_aff = brain_template()
    centre = (t_aff @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1.0])[:3]
    kw = dict(shape=(32, 32, 24), spacing=2.0)
    base_img, base_lab, aff = warp_brain_case(np.random.default_rng(4), local_mm=None, **kw)
    world = (aff[:3, :3] @ np.indices(kw["shape"]).reshape(3, -1) + aff[:3, 3:4]).reshape(3, *kw["shape"])
    far = np.linalg.norm(world - centre[:, None, None, None], axis=0) > 30  # > 4 radii from the caudate
    dice = []
    for s in (0.0, 2.0, 4.0, 8.0):
        img, lab, _ = warp_brain_case(np.random.default_rng(4), local_mm=s, **kw)
        dice.append(2 * (lab & base_lab).sum() / (lab.sum() + base_lab.sum()))
        assert np.abs(img - base_img)[far].max() < 0.01, s  # the rest of the brain is untouched
    # measured: 1.0, 0.87, 0.73, 0.50 — same case, only the local strength differs
    assert dice[0] == 1.0 and dice[1] < 0.95 and dice[2] < dice[1] - 0.05 and dice[3] < dice[2] - 0.1, dice


def _fundus_measures(cohort):
    """Per case: cup-to-disc ratio (√ of the cup / disc areas; the cup is the disc ellipse scaled by
    the ratio) and the rim's brightness over a ring just outside the disc (the disc contrast)."""
    rows = []
    for cid in cohort.case_ids:
        case = load_case(cohort, cid)
        lab, img = np.squeeze(case.label), np.squeeze(case.image).astype(float) / 255
        disc, cup = lab >= 1, lab == 2
        ring = ndimage.binary_dilation(disc, iterations=6) & ~ndimage.binary_dilation(disc, iterations=2)
        rows.append({"case_id": cid, "cdr": np.sqrt(cup.sum() / disc.sum()),
                     "contrast": img[disc & ~cup].mean() - img[ring].mean()})
    return cohort.cases.merge(pd.DataFrame(rows), on="case_id")


def test_fundus_group_effect_cup_to_disc_ratio_and_contrast_by_race(tmp_path):
    # README: Black patients have a larger cup-to-disc ratio (0.62 vs 0.45) and a lower disc contrast.
    # A fresh 90-case cohort (seed 1, 96 px) measures CDR 0.64 (Black, n=19) vs 0.45 / 0.44 (Asian,
    # White) and contrast 0.18 vs 0.31 (generator: N(0.20, 0.04) vs N(0.32, 0.04)).
    t = _fundus_measures(make_sample("fundus", tmp_path / "f", n_cases=90, seed=1, size=96))
    by = t.groupby("race")[["cdr", "contrast"]].mean()
    assert set(by.index) == {"Asian", "Black", "White"}
    assert by.loc["Black", "cdr"] == pytest.approx(0.62, abs=0.04)
    for other in ("Asian", "White"):
        assert by.loc[other, "cdr"] == pytest.approx(0.45, abs=0.03)
        assert by.loc[other, "contrast"] == pytest.approx(0.31, abs=0.03)
    assert by.loc["Black", "contrast"] == pytest.approx(0.19, abs=0.03)
    # the shipped sample carries the same effect
    shipped = _fundus_measures(open_cohort(SAMPLE))
    black = shipped["race"] == "Black"
    assert shipped.loc[black, "cdr"].mean() - shipped.loc[~black, "cdr"].mean() > 0.12
    assert shipped.loc[black, "contrast"].mean() < shipped.loc[~black, "contrast"].mean() - 0.07


def test_part_of_a_brain_cohort_is_made_again_case_for_case(tmp_path, tiny_brain):
    """`only` writes a few cases of a cohort: each one the whole cohort's, group and split included."""
    part = make_sample("brain", tmp_path, n_cases=6, seed=3, shape=(32, 32, 24), spacing=3.0,
                       only={"brain_004", "brain_001"})
    assert part.case_ids == ["brain_001", "brain_004"]
    for cid in part.case_ids:
        a, b = load_case(part, cid), load_case(tiny_brain, cid)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
        assert np.allclose(a.affine, b.affine)
        cols = ["split", "group", "sex", "age", "local_deformation_mm"]
        assert part.row(cid)[cols].tolist() == tiny_brain.row(cid)[cols].tolist()


def test_whole_field_brain_shows_the_whole_head_with_the_caudate_where_the_template_has_it(tmp_path):
    from napari_fairseg.data.synthetic import brain_grid

    t1, caudate, t_aff = brain_template()
    shape, affine = brain_grid("whole", spacing=3.0)
    assert shape == (67, 79, 64)  # 196×232×188 mm of template (197×233×189 voxels of 1 mm) at 3 mm
    lo, hi = (t_aff @ [0, 0, 0, 1])[:3], (t_aff @ [*(np.array(t1.shape) - 1), 1])[:3]
    assert np.allclose(affine[:3, 3] + 3.0 * (np.array(shape) - 1) / 2, (lo + hi) / 2)  # centred on the template
    cohort = make_sample("brain", tmp_path, n_cases=2, seed=0, spacing=3.0, field="whole")
    assert cohort.case_ids == ["head_000", "head_001"]
    case = load_case(cohort, "head_000")
    assert case.image.shape == (1, *shape) and np.allclose(case.affine, affine)
    # the head reaches each face of the field of view but background (exactly 0) surrounds it
    assert 0.2 < (case.image[0] == 0).mean() < 0.6
    world = affine @ np.r_[np.array(np.nonzero(case.label.reshape(shape))).mean(axis=1), 1.0]
    centroid = t_aff @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1.0]
    assert np.linalg.norm(world[:3] - centroid[:3]) < 8.0  # where the template has it: a few mm of warp, 3 mm voxels
    with pytest.raises(ValueError, match="field must be one of"):
        brain_grid("head")


def test_the_two_brain_fields_merge_into_one_training_manifest(tmp_path, tiny_brain, fundus):
    """How `make zoo` trains the bundled brain model on caudate crops and whole heads at once."""
    from napari_fairseg.data.manifest import merge_cohorts, read_manifest, write_manifest
    from napari_fairseg.errors import InputDataError

    head = make_sample("brain", tmp_path / "head", n_cases=2, seed=0, spacing=6.0, field="whole")
    path = write_manifest(merge_cohorts([tiny_brain, head], name="both"), tmp_path / "both.csv")
    both = read_manifest(path)  # files found from the new manifest's folder
    assert both.case_ids == [*tiny_brain.case_ids, "head_000", "head_001"] and both.kind == "nifti"
    assert both.row("head_001")["split"] == head.row("head_001")["split"]
    assert load_case(both, "head_000").image.shape == load_case(head, "head_000").image.shape
    with pytest.raises(InputDataError, match=r"case ids in more than one cohort: \['head_000', 'head_001'\]"):
        merge_cohorts([head, head], name="twice")
    with pytest.raises(InputDataError, match="cannot merge a fairseg cohort"):
        merge_cohorts([head, fundus], name="mixed")


def test_t2_like_template_reverses_the_t1_contrast_of_fluid_and_white_matter():
    from napari_fairseg.data.synthetic import T2_CONTRAST, _template_file, brain_t2_template

    t1, caudate, _ = brain_template()
    t2 = brain_t2_template()
    assert t2.shape == t1.shape and t2.dtype == np.float32 and 0 <= t2.min() and t2.max() <= 1
    gm = np.asarray(nib.load(_template_file("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
    wm = np.asarray(nib.load(_template_file("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
    gm, wm = gm / gm.max(), wm / wm.max()
    brain = t1 > 0
    csf = brain & (gm < 0.05) & (wm < 0.05)  # ventricles, sulci
    pure_gm, pure_wm = brain & (gm > 0.95), brain & (wm > 0.95)
    means = {k: float(t2[m].mean()) for k, m in (("csf", csf), ("gm", pure_gm), ("wm", pure_wm))}
    assert means["csf"] > means["gm"] > means["wm"]  # T2: fluid bright, white matter dark
    assert means == pytest.approx(T2_CONTRAST, abs=0.05)
    assert t1[csf].mean() < t1[pure_gm].mean() < t1[pure_wm].mean()  # the T1 the other way round
    assert (t2[~brain] == 0).all() and t2[caudate].mean() == pytest.approx(T2_CONTRAST["gm"], abs=0.1)


def test_a_t2_cohort_has_the_t1_cohorts_groups_on_other_subjects(tmp_path):
    kw = dict(n_cases=4, seed=5, shape=(32, 32, 24), spacing=3.0)
    t1 = make_sample("brain", tmp_path / "t1", **kw)
    t2 = make_sample("brain", tmp_path / "t2", modality="t2", **kw)
    assert t2.case_ids == ["brain_t2_000", "brain_t2_001", "brain_t2_002", "brain_t2_003"]
    assert "T2 contrast" in t2.notes[0]
    for i in range(4):
        a, b = t1.cases.iloc[i], t2.cases.iloc[i]
        assert (a["group"], a["split"]) == (b["group"], b["split"])
        la, lb = load_case(t1, a["case_id"]).label, load_case(t2, b["case_id"]).label
        assert not np.array_equal(la, lb)  # another deformation: another subject
        assert 0.25 < lb.sum() / la.sum() < 4  # the same structure (a few dozen 3 mm voxels, deformed)
    again = make_sample("brain", tmp_path / "again", modality="t2", **kw)
    assert np.array_equal(load_case(t2, "brain_t2_002").image, load_case(again, "brain_t2_002").image)
    with pytest.raises(ValueError, match="modality must be one of"):
        make_sample("brain", tmp_path / "x", modality="flair", **kw)


def test_sample_modality_from_the_command_line(tmp_path, capsys):
    from napari_fairseg.cli import main

    assert main(["--quiet", "sample", "brain", "--modality", "t2", "--cases", "2", "--out", str(tmp_path / "b")]) == 0
    assert open_cohort(tmp_path / "b" / "manifest.csv").case_ids == ["brain_t2_000", "brain_t2_001"]
    assert main(["--quiet", "sample", "fundus", "--modality", "t2", "--out", str(tmp_path / "f")]) == 2
    assert "--field and --modality are options of the brain sample" in capsys.readouterr().err
