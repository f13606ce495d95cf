"""Entropy, mutual information, the dilated ROI and masked scaled entropy vs hand computations."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import entropy as scipy_entropy

from napari_fairseg.inference.uncertainty import (
    PassAccumulator,
    _dilate_box_cumsum,
    decode,
    dilate,
    dilated_boxes,
    entropy,
    masked_scaled_entropy,
    masked_scaled_entropy_in_boxes,
    max_entropy,
    probabilities,
    roi_mask,
)


def test_binary_entropy_by_hand():
    p = np.array([0.0, 1.0, 0.5, 0.1, 0.9, 0.25])
    hand = np.array([0, 0, math.log(2), -(0.1 * math.log(0.1) + 0.9 * math.log(0.9)),
                     -(0.1 * math.log(0.1) + 0.9 * math.log(0.9)), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    got = entropy(torch.tensor(p, dtype=torch.float32).reshape(1, 1, -1), "sigmoid")[0].numpy()
    np.testing.assert_allclose(got, hand, atol=1e-6)
    assert np.isfinite(got).all()


def test_categorical_entropy_matches_scipy(rng):
    logits = rng.normal(size=(2, 4, 5, 6))
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = entropy(torch.tensor(prob), "softmax").numpy()
    np.testing.assert_allclose(got, scipy_entropy(prob, axis=1), rtol=1e-5)
    assert got.max() <= math.log(4) + 1e-6
    assert max_entropy("softmax", 4) == pytest.approx(math.log(4)) and max_entropy("sigmoid", 2) == math.log(2)


@pytest.mark.parametrize("shape", [(3, 17, 15), (2, 9, 11, 7)])
@pytest.mark.parametrize("radius", [0, 1, 3])
def test_dilation_equals_scipy_with_a_cube(rng, shape, radius):
    mask = rng.random(shape) > 0.97
    got = dilate(torch.from_numpy(mask), radius).numpy()
    cube = np.ones((1,) + (2 * radius + 1,) * (len(shape) - 1), dtype=bool)
    np.testing.assert_array_equal(got, ndimage.binary_dilation(mask, structure=cube) if radius else mask)


def _h(p):
    """Binary entropy in nats, by hand."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def partial_roi_probabilities():
    """Two cases ``(2, 1, 8, 9, 4)`` whose radius-1 ROI is a small, non-convex part of the image.

    Background p = 0.5 (entropy log 2, the largest), so any mean that strays outside the ROI
    is pulled up. Case 0: two predicted voxels, (1, 1, 1) at p = 0.9 and (5, 5, 2) at p = 0.7,
    each in a 3×3×3 neighbourhood of p = 0.1 / 0.3 (the same entropy as its centre): ROI
    2 × 27 = 54 voxels inside a 7×7×4 = 196-voxel bounding box of a 288-voxel image.
    Case 1: one predicted voxel in the far corner (7, 8, 3) at p = 0.6, neighbourhood p = 0.4,
    cut by the image border to 2×2×2 = 8 voxels.
    """
    p = np.full((2, 1, 8, 9, 4), 0.5, dtype=np.float32)
    p[0, 0, 0:3, 0:3, 0:3], p[0, 0, 1, 1, 1] = 0.1, 0.9
    p[0, 0, 4:7, 4:7, 1:4], p[0, 0, 5, 5, 2] = 0.3, 0.7
    p[1, 0, 6:8, 7:9, 2:4], p[1, 0, 7, 8, 3] = 0.4, 0.6
    return torch.from_numpy(p)


#: Eq. 1 on :func:`partial_roi_probabilities` by hand: case 0 (27 h(0.9) + 27 h(0.7)) / 54,
#: case 1 8 h(0.6) / 8; the ROI sizes; the whole-image means (what ignoring the ROI gives).
PARTIAL_ROI_EXPECTED = {"masked": [(_h(0.9) + _h(0.7)) / 2, _h(0.6)], "roi_voxels": [54, 8],
                        "image_mean": [(27 * _h(0.9) + 27 * _h(0.7) + 234 * math.log(2)) / 288,
                                       (8 * _h(0.6) + 280 * math.log(2)) / 288]}


def test_masked_scaled_entropy_of_a_partial_roi_by_hand():
    expected = PARTIAL_ROI_EXPECTED
    assert expected["masked"] == pytest.approx([0.4679736377, 0.6730116670])  # the explicit numbers
    assert expected["image_mean"] == pytest.approx([0.6509271413, 0.6925878607])  # ignoring the ROI differs
    prob = partial_roi_probabilities()
    label = decode(prob, "sigmoid", (0, 1))
    assert label.sum(dim=(1, 2, 3)).tolist() == [2, 1]
    roi = roi_mask(label, 1)
    assert roi.sum(dim=(1, 2, 3)).tolist() == expected["roi_voxels"]
    scores, empty = masked_scaled_entropy(entropy(prob, "sigmoid"), roi)
    assert scores.tolist() == pytest.approx(expected["masked"], rel=1e-5) and not empty.any()
    # the lean path: entropy inside the dilated boxes only; it must count the ROI, not its box
    boxes = dilated_boxes(label != 0, 1)
    assert [int(np.prod([s.stop - s.start for s in box])) for box, _ in boxes] == [196, 8]
    lean, lean_empty = masked_scaled_entropy_in_boxes(prob, boxes, "sigmoid")
    assert lean.tolist() == pytest.approx(expected["masked"], rel=1e-5) and not lean_empty.any()


def test_masked_scaled_entropy_by_hand(rng):
    prob = rng.random((2, 1, 12, 10, 8)).astype(np.float32)
    prob[0, 0, 3:6, 3:6, 3:5] = 0.95  # a predicted structure in case 0
    prob[1] = np.minimum(prob[1], 0.4)  # case 1: nothing predicted
    p = torch.from_numpy(prob)
    label = decode(p, "sigmoid", (0, 1))
    roi = roi_mask(label, 2)
    ent = entropy(p, "sigmoid")
    scores, empty = masked_scaled_entropy(ent, roi, empty="max")
    # hand: binary entropy averaged over the 2-voxel cube dilation of p > 0.5
    q = prob[0, 0].astype(np.float64)
    h = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    r = ndimage.binary_dilation(q > 0.5, structure=np.ones((5, 5, 5)))
    assert scores[0].item() == pytest.approx(h[r].mean(), rel=1e-5)
    assert r.sum() == roi[0].sum().item()
    assert empty.tolist() == [False, True]
    assert scores[1].item() == pytest.approx(math.log(2))
    whole, _ = masked_scaled_entropy(ent, roi, empty="whole")
    assert whole[1].item() == pytest.approx(ent[1].mean().item(), rel=1e-6)
    nan, _ = masked_scaled_entropy(ent, roi, empty="nan")
    assert math.isnan(nan[1].item()) and nan[0].item() == pytest.approx(scores[0].item())
    with pytest.raises(ValueError, match="empty must be one of"):
        masked_scaled_entropy(ent, roi, empty="zero")


def test_roi_counts_any_foreground_class():
    label = torch.zeros(1, 9, 9, dtype=torch.int16)
    label[0, 4, 4] = 2
    assert roi_mask(label, 1).sum().item() == 9


def test_mutual_information_by_hand():
    p1 = torch.tensor([[[0.9, 0.5, 0.2]]])
    p2 = torch.tensor([[[0.1, 0.5, 0.2]]])
    acc = PassAccumulator("sigmoid")
    acc.add(p1)
    acc.add(p2)

    def h(p):
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))

    mean = np.array([0.5, 0.5, 0.2])
    hand = h(mean) - (h(np.array([0.9, 0.5, 0.2])) + h(np.array([0.1, 0.5, 0.2]))) / 2
    np.testing.assert_allclose(acc.mutual_information()[0].numpy(), hand, atol=1e-6)
    np.testing.assert_allclose(acc.mean()[0, 0].numpy(), mean, atol=1e-7)
    assert acc.mutual_information()[0, 0] > 0.3  # disagreeing passes: high MI; agreeing: 0
    with pytest.raises(ValueError):
        PassAccumulator("sigmoid").mean()


def test_decode_maps_to_label_values():
    prob = torch.tensor([[[0.2, 0.7], [0.3, 0.1], [0.5, 0.2]]]).reshape(1, 3, 2)
    assert decode(prob, "softmax", (0, 1, 2)).tolist() == [[2, 0]]
    fg = torch.tensor([[[0.5, 0.51]]])
    assert decode(fg, "sigmoid", (0, 4)).tolist() == [[0, 4]]


def _scipy_cube_dilation(mask, radius):
    return ndimage.binary_dilation(mask, structure=np.ones((2 * radius + 1,) * mask.ndim, dtype=bool))


@pytest.mark.parametrize("shape", [(13, 11), (9, 7, 6)])
@pytest.mark.parametrize("radius", [1, 2, 4])
def test_cumulative_sum_dilation_equals_scipy_at_the_borders_too(rng, shape, radius):
    """The window-count dilation used off the CPU, run here on CPU tensors, against SciPy."""
    for trial in range(3):
        mask = rng.random(shape) > 0.93
        mask[(0,) * len(shape)] = trial != 1  # corner voxels: the window runs off the image
        mask[tuple(s - 1 for s in shape)] = trial != 2
        mask[(0, *(s // 2 for s in shape[1:]))] = True  # on an edge, mid-way
        got = _dilate_box_cumsum(torch.from_numpy(mask), radius)
        assert got.dtype == torch.bool and got.shape == shape
        np.testing.assert_array_equal(got.numpy(), _scipy_cube_dilation(mask, radius))
    single = np.zeros(shape, dtype=bool)
    single[(1,) * len(shape)] = True  # one voxel next to the border: a cut cube of known size
    n = int(_dilate_box_cumsum(torch.from_numpy(single), radius).sum())
    assert n == int(np.prod([min(s, 2 + radius) for s in shape]))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_dilation_and_roi_scores_on_each_device_equal_scipy(rng, device):
    """On a GPU, :func:`dilate` and both Eq. 1 paths take the cumulative-sum branch."""
    mask = rng.random((2, 10, 9, 7)) > 0.95
    mask[0, 0, 0, 0] = mask[1, -1, -1, -1] = True
    got = dilate(torch.from_numpy(mask).to(device), 2)
    assert got.device.type == device
    np.testing.assert_array_equal(got.cpu().numpy(), np.stack([_scipy_cube_dilation(m, 2) for m in mask]))
    soft = torch.tensor([[[0.2, 0.7], [0.3, 0.1], [0.5, 0.2]]], device=device)
    assert decode(soft, "softmax", (0, 3, 7)).cpu().tolist() == [[7, 0]]
    prob = partial_roi_probabilities().to(device)
    label = decode(prob, "sigmoid", (0, 1))
    full, _ = masked_scaled_entropy(entropy(prob, "sigmoid"), roi_mask(label, 1))
    lean, _ = masked_scaled_entropy_in_boxes(prob, dilated_boxes(label != 0, 1), "sigmoid")
    for scores in (full, lean):
        assert scores.device.type == device
        assert scores.cpu().tolist() == pytest.approx(PARTIAL_ROI_EXPECTED["masked"], rel=1e-5)


@pytest.mark.parametrize("rule", ["max", "whole", "nan"])
def test_the_lean_path_scores_an_empty_prediction_by_the_same_rule(rule):
    """A case whose prediction is empty (no ROI) scores the same on the lean path as on the
    full one, under every empty rule; the other case of the batch keeps its Eq. 1 score."""
    prob = partial_roi_probabilities()
    prob[1] = 0.2 + 0.1 * torch.linspace(0, 1, prob[1].numel()).reshape(prob[1].shape)  # nothing over 0.5
    label = decode(prob, "sigmoid", (0, 1))
    assert label[1].sum() == 0 and label[0].sum() > 0
    full, full_empty = masked_scaled_entropy(entropy(prob, "sigmoid"), roi_mask(label, 1), empty=rule)
    lean, lean_empty = masked_scaled_entropy_in_boxes(prob, dilated_boxes(label != 0, 1), "sigmoid", empty=rule)
    assert full_empty.tolist() == lean_empty.tolist() == [False, True]
    np.testing.assert_allclose(lean.numpy(), full.numpy(), rtol=1e-5, equal_nan=True)
    expected = {"max": math.log(2), "whole": float(entropy(prob, "sigmoid")[1].mean()), "nan": float("nan")}[rule]
    np.testing.assert_allclose(float(lean[1]), expected, rtol=1e-5, equal_nan=True)
    assert float(lean[0]) == pytest.approx(PARTIAL_ROI_EXPECTED["masked"][0], rel=1e-5)


def test_probabilities_softmax_over_classes_and_sigmoid_by_hand():
    logits = torch.tensor([[[0.0, 1.0, -2.0], [1.0, 1.0, 0.5]]])  # (B 1, K 2, S 3)
    soft = probabilities(logits, "softmax")
    e = np.exp(logits.numpy()[0])
    np.testing.assert_allclose(soft[0].numpy(), e / e.sum(axis=0), rtol=1e-6)  # per voxel, over K
    np.testing.assert_allclose(probabilities(logits[:, :1], "sigmoid")[0, 0].numpy(),
                               1 / (1 + np.exp(-np.array([0.0, 1.0, -2.0]))), rtol=1e-6)


def test_max_entropy_is_log2_for_a_sigmoid_head_whatever_the_channel_count():
    assert max_entropy("sigmoid", 1) == max_entropy("sigmoid", 2) == pytest.approx(math.log(2))
    assert max_entropy("softmax", 3) == pytest.approx(math.log(3))


def test_decode_gives_int16_label_values():
    fg = torch.tensor([[[0.2, 0.8]]])
    for values in ((0, 1), (0, 2), (0, 255)):
        got = decode(fg, "sigmoid", values)
        assert got.dtype == torch.int16 and got.tolist() == [[0, values[1]]], values
    prob = torch.tensor([[[0.2, 0.7], [0.3, 0.1], [0.5, 0.2]]])
    got = decode(prob, "softmax", (0, 3, 7))
    assert got.dtype == torch.int16 and got.tolist() == [[7, 0]]


def test_dilated_boxes_are_the_grown_bounding_box_per_axis():
    mask = torch.zeros(3, 10, 12, dtype=torch.bool)
    mask[1, 2, 7] = True  # case 0 is empty: the cases after it still get their boxes
    mask[2, 8:10, 0:3] = True
    boxes = dilated_boxes(mask, 1)
    assert boxes[0] is None and len(boxes) == 3
    assert boxes[1][0] == (slice(1, 4), slice(6, 9)) and boxes[1][1].all()
    assert boxes[2][0] == (slice(7, 10), slice(0, 4))
    got = dilate(mask, 1)
    assert got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), np.stack([_scipy_cube_dilation(m, 1) for m in mask.numpy()]))


def test_lean_scores_with_an_empty_first_case_and_a_one_voxel_roi():
    # case 0 predicts nothing; case 1 predicts one voxel (p 0.8) and radius 0: R is that voxel, so
    # Ĥ = H(0.8) = −0.8 ln 0.8 − 0.2 ln 0.2 by hand, in float32 whatever the probabilities' dtype
    prob = torch.full((2, 1, 4, 4), 0.1, dtype=torch.float64)
    prob[1, 0, 2, 3] = 0.8
    label = decode(prob, "sigmoid", (0, 1))
    lean, empty = masked_scaled_entropy_in_boxes(prob, dilated_boxes(label != 0, 0), "sigmoid")
    h08 = -0.8 * math.log(0.8) - 0.2 * math.log(0.2)
    assert empty.tolist() == [True, False] and lean.dtype == torch.float32
    assert lean.tolist() == pytest.approx([math.log(2), h08], rel=1e-6)
    full, _ = masked_scaled_entropy(entropy(prob, "sigmoid"), roi_mask(label, 0))
    assert full.tolist() == pytest.approx([math.log(2), h08], rel=1e-6)
