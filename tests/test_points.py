"""Fundus masks ↔ point clouds (seed 003's representation, data/points.py)."""

import numpy as np
import pytest

from napari_fairseg.data.arrays import load_case
from napari_fairseg.data.points import farthest_point_sampling, mask_to_points, points_to_mask


def _disc_cup(shape=(128, 128), centre=(60, 70), r_disc=20, r_cup=9):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    d2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    label = np.zeros(shape, np.int16)
    label[d2 <= r_disc ** 2] = 1
    label[d2 <= r_cup ** 2] = 2
    return label


def test_a_disc_and_cup_by_hand():
    label = _disc_cup()
    pts = mask_to_points(label, n_points=512, rng=np.random.default_rng(0))
    assert pts.shape == (512, 3) and set(np.unique(pts[:, 2])) == {-5.0, 5.0}
    disc, cup = pts[pts[:, 2] < 0], pts[pts[:, 2] > 0]
    # outline points lie on their circles (x = column, y = row), within a pixel
    np.testing.assert_allclose(np.hypot(disc[:, 0] - 70, disc[:, 1] - 60), 20, atol=1.0)
    np.testing.assert_allclose(np.hypot(cup[:, 0] - 70, cup[:, 1] - 60), 9, atol=1.0)
    back = points_to_mask(pts, label.shape)
    for value in (1, 2):
        a, b = back >= value, label >= value
        assert abs(a.sum() - b.sum()) / b.sum() < 0.05
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97


def test_round_trip_on_the_fundus_sample(fundus):
    """Every sample mask: area error of disc and cup under 10 %, Dice over 0.9, cup inside disc."""
    for cid in fundus.case_ids[:20]:
        label = load_case(fundus, cid).label
        back = points_to_mask(mask_to_points(label, rng=np.random.default_rng(1)), label.shape)
        assert not ((back == 2) & ~(back >= 1)).any()
        for value in (1, 2):  # disc (rim ∪ cup), cup
            a, b = back >= value, label >= value
            assert abs(int(a.sum()) - int(b.sum())) / b.sum() < 0.10, (cid, value, a.sum(), b.sum())
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9, (cid, value)


def test_farthest_point_sampling_by_hand():
    pts = np.array([[0.0, 0], [1, 0], [10, 0], [5, 0]])
    assert farthest_point_sampling(pts, 3).tolist() == [0, 2, 3]  # 0, then the farthest (10), then 5
    assert farthest_point_sampling(pts, 6).tolist() == [0, 2, 3, 1, 0, 2]  # fewer points than asked: repeated


def test_a_cup_outside_the_disc_is_clipped_to_it():
    label = _disc_cup()
    pts = mask_to_points(label)
    pts[pts[:, 2] > 0, 0] += 25  # move the cup's outline half out of the disc
    back = points_to_mask(pts, label.shape)
    assert (back == 2).any() and not ((back == 2) & ~(back >= 1)).any()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 4, 4), np.int16), "2D"),
    (np.full((8, 8), 3, np.int16), "values must be 0"),
    (np.zeros((8, 8), np.int16), "no optic disc"),
])
def test_bad_masks_get_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        mask_to_points(bad)
    with pytest.raises(ValueError, match="finite"):
        points_to_mask(np.array([[0.0, np.nan, 1.0]]), (8, 8))
