"""Entropy, mutual information, the dilated ROI and masked scaled entropy vs hand computations."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import entropy as scipy_entropy

from napari_fairseg.inference.uncertainty import (
    PassAccumulator,
    decode,
    dilate,
    entropy,
    masked_scaled_entropy,
    max_entropy,
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
