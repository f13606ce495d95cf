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


@pytest.mark.parametrize("n_points", [64, 128, 512])
def test_round_trip_on_the_fundus_sample(fundus, n_points):
    """Sample masks, with clouds sparser than the outlines (64, 128 points) and the paper's 512:
    area error of disc and cup under 10 %, Dice over 0.9, cup inside disc."""
    for cid in fundus.case_ids[:20]:
        label = load_case(fundus, cid).label
        back = points_to_mask(mask_to_points(label, n_points=n_points, rng=np.random.default_rng(1)), label.shape)
        assert not ((back == 2) & ~(back >= 1)).any()
        for value in (1, 2):  # disc (rim ∪ cup), cup
            a, b = back >= value, label >= value
            assert abs(int(a.sum()) - int(b.sum())) / b.sum() < 0.10, (cid, value, a.sum(), b.sum())
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9, (cid, value)


def test_a_large_disc_from_512_points_and_a_stray_point():
    """At 512² a disc's outline has more pixels than the cloud has points: the polygon still
    fills it (a closing of the drawn points did not); one stray point costs neither time nor the mask."""
    import time

    label = _disc_cup((512, 512), (256, 250), 120, 60)
    pts = mask_to_points(label, n_points=512, rng=np.random.default_rng(0))
    back = points_to_mask(pts, label.shape)
    for value in (1, 2):
        a, b = back >= value, label >= value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.98
    t = time.perf_counter()
    stray = points_to_mask(np.array([[0.0, 0, -5], [127, 127, -5]]), (128, 128))
    assert time.perf_counter() - t < 1.0 and stray.sum() == 2  # two points: no area, no hang
    assert not points_to_mask(np.zeros((0, 3)), (8, 8)).any()
    with pytest.raises(ValueError, match="mask shape"):
        points_to_mask(pts, (64, 64, 3))


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
    label = _disc_cup()
    for kw, m in (({"z0": 0}, "z0"), ({"z0": float("nan")}, "z0"), ({"n_points": 2.5}, "n_points"),
                  ({"n_points": 10**6}, "n_points")):
        with pytest.raises(ValueError, match=m):
            mask_to_points(label, **kw)
