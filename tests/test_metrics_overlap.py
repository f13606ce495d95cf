"""Dice / IoU against MONAI and a hand computation."""

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou

from napari_fairseg.metrics import class_counts, confusion_counts, overlap_metrics

FUNDUS = {"cup": (2,), "rim": (1,), "disc": (1, 2)}


def onehot(label, classes):
    """(B, *S) class map → (B, C, *S) float one-hot of the named (possibly union) classes."""
    return torch.from_numpy(np.stack([np.isin(label, v) for v in classes.values()], axis=1).astype(np.float32))


def test_dice_iou_match_monai_on_random_fundus_maps(rng):
    y = rng.integers(0, 3, size=(40, 32, 32))
    y_pred = np.where(rng.random(y.shape) < 0.3, rng.integers(0, 3, size=y.shape), y)
    ours = overlap_metrics(y_pred, y, FUNDUS)
    ref_dice = compute_dice(onehot(y_pred, FUNDUS), onehot(y, FUNDUS), include_background=True).numpy()
    ref_iou = compute_iou(onehot(y_pred, FUNDUS), onehot(y, FUNDUS), include_background=True).numpy()
    for c, name in enumerate(FUNDUS):
        np.testing.assert_allclose(ours[f"dice_{name}"], ref_dice[:, c], rtol=1e-6)
        np.testing.assert_allclose(ours[f"iou_{name}"], ref_iou[:, c], rtol=1e-6)


def test_empty_masks_follow_monai_ignore_empty_false_and_are_configurable():
    y = np.zeros((3, 8, 8), dtype=np.int16)
    y_pred = y.copy()
    y_pred[1, 2, 2] = 1  # predicted where the truth is empty → 0
    y[2, 3, 3] = 1  # missed entirely → 0
    ours = overlap_metrics(y_pred, y, {"fg": (1,)})
    ref = compute_dice(onehot(y_pred, {"fg": (1,)}), onehot(y, {"fg": (1,)}), ignore_empty=False).numpy()[:, 0]
    np.testing.assert_allclose(ours["dice_fg"], ref)
    np.testing.assert_allclose(ours["dice_fg"], [1.0, 0.0, 0.0])
    mm = overlap_metrics(y_pred, y, {"fg": (1,)}, empty_score=0.0)  # the MAMA-MIA scorer
    np.testing.assert_allclose(mm["dice_fg"], [0.0, 0.0, 0.0])
    assert np.isnan(overlap_metrics(y_pred, y, {"fg": (1,)}, empty_score=np.nan)["iou_fg"][0])


def test_hand_computed_case():
    # truth: 4 voxels of class 1; prediction: 3 of them + 2 false positives
    y = np.zeros((1, 4, 4), dtype=np.uint8)
    y[0, 0, :4] = 1
    p = np.zeros_like(y)
    p[0, 0, :3] = 1
    p[0, 3, :2] = 1
    m = overlap_metrics(p, y, {"fg": (1,)})
    assert m["dice_fg"][0] == pytest.approx(2 * 3 / (5 + 4))
    assert m["iou_fg"][0] == pytest.approx(3 / 6)
    assert (m["tp_fg"][0], m["fp_fg"][0], m["fn_fg"][0]) == (3, 2, 1)


def test_confusion_counts_chunking_and_validation(rng, monkeypatch):
    import napari_fairseg.metrics.overlap as ov

    y = rng.integers(0, 4, size=(7, 9, 5))
    p = rng.integers(0, 4, size=(7, 9, 5))
    full = confusion_counts(p, y)
    monkeypatch.setattr(ov, "_CHUNK_VOXELS", 50)  # forces one case per chunk
    np.testing.assert_array_equal(confusion_counts(p, y), full)
    assert full.sum() == y.size
    for b in range(7):
        for i in range(4):
            for j in range(4):
                assert full[b, i, j] == np.sum((p[b] == i) & (y[b] == j))
    tp, fp, fn = class_counts(full, (1, 2))
    u_p, u_g = np.isin(p, (1, 2)), np.isin(y, (1, 2))
    np.testing.assert_array_equal(tp, (u_p & u_g).sum(axis=(1, 2)))
    np.testing.assert_array_equal(fp, (u_p & ~u_g).sum(axis=(1, 2)))
    np.testing.assert_array_equal(fn, (~u_p & u_g).sum(axis=(1, 2)))
    with pytest.raises(ValueError, match="same shape"):
        confusion_counts(p, y[:, :3])
    with pytest.raises(ValueError, match=">= 0"):
        confusion_counts(p - 1, y)
    with pytest.raises(TypeError, match="integer"):
        confusion_counts(p.astype(float), y)


def test_errors_name_the_offending_array_and_shapes_are_documented(rng):
    y = rng.integers(0, 3, size=(2, 6))  # (B, *spatial) with one spatial axis is a valid batch
    p = rng.integers(0, 3, size=(2, 6))
    cm = confusion_counts(p, y)
    assert cm.shape == (2, 3, 3) and cm.dtype == np.int64  # K = max label + 1, integer voxel counts
    for b in range(2):
        assert cm[b].tolist() == [[np.sum((p[b] == i) & (y[b] == j)) for j in range(3)] for i in range(3)]
    m = overlap_metrics(p, y, {"fg": (1, 2)})
    assert m["tp_fg"].dtype == np.int64
    with pytest.raises(TypeError, match=r"^y_pred must hold integer"):
        confusion_counts(p.astype(float), y)
    with pytest.raises(TypeError, match=r"^y must hold integer"):
        confusion_counts(p, y.astype(float))
    with pytest.raises(ValueError, match=r"\(B, \*spatial\)"):
        confusion_counts(p[0], y[0])


def test_many_label_values_do_not_overflow_the_pair_codes(rng):
    # 20 label values: 400 (prediction, truth) pairs, more than a uint8 code can hold
    y = rng.integers(0, 20, size=(3, 30, 30))
    p = np.where(rng.random(y.shape) < 0.5, y, rng.integers(0, 20, size=y.shape))
    cm = confusion_counts(p, y)
    assert cm.shape == (3, 20, 20)
    for i, j in ((19, 19), (19, 0), (0, 19), (7, 13)):
        np.testing.assert_array_equal(cm[:, i, j], ((p == i) & (y == j)).sum(axis=(1, 2)))


def test_a_class_absent_from_the_whole_batch_scores_empty_score():
    # no case has a cup (value 2): the label maps only hold 0 and 1
    y = np.zeros((2, 4, 4), dtype=np.uint8)
    y[:, 1, 1] = 1
    m = overlap_metrics(y.copy(), y, FUNDUS)
    np.testing.assert_array_equal(m["dice_cup"], [1.0, 1.0])
    np.testing.assert_array_equal(m["tp_cup"] + m["fp_cup"] + m["fn_cup"], [0, 0])
    np.testing.assert_array_equal(m["dice_disc"], [1.0, 1.0])


def test_counts_to_scores_by_hand_defaults_single_voxels_and_no_warnings():
    import warnings

    from napari_fairseg.metrics import dice_from_counts, iou_from_counts

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both-empty cases must not raise 0/0 RuntimeWarnings
        assert dice_from_counts(0, 0, 0) == 1.0 and iou_from_counts(0, 0, 0) == 1.0  # MONAI's default
        # one-voxel cases: a single false positive is a miss, not "both empty"
        np.testing.assert_array_equal(iou_from_counts([0, 1, 0], [1, 0, 0], [0, 0, 1]), [0.0, 1.0, 0.0])
        np.testing.assert_array_equal(dice_from_counts([0, 1, 0], [1, 0, 0], [0, 0, 1]), [0.0, 1.0, 0.0])
        # counts kept in a narrow integer type must not wrap around (2·200 > 255)
        tp, fp, fn = (np.array([v], dtype=np.uint8) for v in (200, 100, 50))
        assert dice_from_counts(tp, fp, fn)[0] == pytest.approx(400 / 550)
        assert iou_from_counts(tp, fp, fn)[0] == pytest.approx(200 / 350)
        # soft (probability-weighted) counts below one voxel follow the same formulas
        assert iou_from_counts(0.3, 0.1, 0.2) == pytest.approx(0.5)
        assert dice_from_counts(0.1, 0.1, 0.1) == pytest.approx(0.5)
