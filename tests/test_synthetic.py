"""Sample cohorts: deterministic, with the documented group effects, shipped data not stale."""

from pathlib import Path

import nibabel as nib
import numpy as np

from napari_fairseg.data import load_case, open_cohort
from napari_fairseg.data.synthetic import brain_template, make_sample

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "fundus"


def test_caudate_label_follows_image_content():
    t1, caudate, affine = brain_template()
    assert 3000 < caudate.sum() < 8000  # mm³ at 1 mm: a plausible caudate
    centroid = (affine @ np.r_[np.array(np.nonzero(caudate)).mean(axis=1), 1])[:3]
    assert centroid[0] < 0  # left hemisphere (RAS)
    # grey-matter intensity inside, darker than the white matter a few mm lateral to it
    inside = t1[caudate].mean()
    assert 0.3 < inside < 0.9


def test_brain_is_deterministic_and_group1_is_deformed(tmp_path):
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


def test_fundus_group_effect_cup_to_disc_ratio():
    c = open_cohort(SAMPLE)
    cdr = {}
    for cid in c.case_ids:
        lab = load_case(c, cid).label
        cdr[cid] = np.sqrt((lab == 2).sum() / (lab >= 1).sum())
    race = c.cases.set_index("case_id")["race"]
    black = np.mean([cdr[i] for i in race.index if race[i] == "Black"])
    other = np.mean([cdr[i] for i in race.index if race[i] != "Black"])
    assert black - other > 0.1
