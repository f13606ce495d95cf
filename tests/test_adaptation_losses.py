"""Seed 002's losses (UUDS Eq. 1–2, 4, 9), our distribution matching and the start polarity,
against hand computations, values and gradients."""

import math

import pytest
import torch

from napari_fairseg.training.adaptation import (
    batch_contrastive_loss,
    distribution_loss,
    domain_distillation_loss,
    identity_loss,
    start_polarity,
    uuds_loss,
)


def test_domain_distillation_by_hand():
    prompt = torch.tensor([1.0, 0.0])
    pulled = torch.tensor([[1.0, 1.0]])  # cos 1/√2
    pushed = torch.tensor([[0.0, 2.0]])  # cos 0
    tau = 0.5
    a, b = (1 - 1 / math.sqrt(2)) / tau, (1 - 0) / tau
    expected = math.log(math.exp(a) / (math.exp(a) + math.exp(b)))
    assert domain_distillation_loss(pulled, pushed, prompt, tau=tau).item() == pytest.approx(expected, rel=1e-6)
    # its gradient draws the pulled feature toward the prompt: the descent step raises its cosine
    x = pulled.clone().requires_grad_(True)
    domain_distillation_loss(x, pushed, prompt, tau=tau).backward()
    stepped = (x - 0.1 * x.grad).detach()
    assert torch.cosine_similarity(stepped, prompt[None]) > torch.cosine_similarity(pulled, prompt[None])
    # bounds: the best case (pulled on the prompt, pushed opposite) and symmetry
    best = domain_distillation_loss(prompt[None], -prompt[None], prompt, tau=tau).item()
    assert best == pytest.approx(-2 / tau - math.log1p(math.exp(-2 / tau)), rel=1e-6)
    assert domain_distillation_loss(pulled, pulled, prompt, tau=tau).item() == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError, match="tau must be > 0"):
        domain_distillation_loss(pulled, pushed, prompt, tau=0)


def test_domain_distillation_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    prompt = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, t: domain_distillation_loss(a, b, t, tau=0.3), (*args, prompt))


def test_batch_contrast_by_hand():
    # three unit embeddings: 0 and 1 share a label, 2 is alone (an anchor without positives adds nothing)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    tau = 1.0
    # anchor 0: positive 1 (dot 0), others {1: 0, 2: -1}; anchor 1: positive 0 (dot 0), others {0: 0, 2: 0}
    l0 = -(0 - math.log(math.exp(0) + math.exp(-1)))
    l1 = -(0 - math.log(math.exp(0) + math.exp(0)))
    assert batch_contrastive_loss(z, labels, tau=tau).item() == pytest.approx(l0 + l1, rel=1e-6)
    assert batch_contrastive_loss(z * 5, labels, tau=tau).item() == pytest.approx(l0 + l1, rel=1e-6)  # normalised
    assert batch_contrastive_loss(z, torch.tensor([0, 1, 2])).item() == 0  # no positives at all
    with pytest.raises(ValueError, match="labels has 2"):
        batch_contrastive_loss(z, labels[:2])


def test_batch_contrast_gradients_and_direction():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda x: batch_contrastive_loss(x, labels, tau=0.5), (z,))
    # a descent step brings same-label embeddings together
    loss = batch_contrastive_loss(z, labels, tau=0.5)
    loss.backward()
    moved = torch.nn.functional.normalize((z - 0.05 * z.grad).detach(), dim=1)
    before = torch.nn.functional.normalize(z.detach(), dim=1)
    assert batch_contrastive_loss(moved, labels, tau=0.5) < loss.detach()
    assert (moved[0] @ moved[2]) > (before[0] @ before[2])


def test_identity_and_total():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([[1.5, 2.0], [2.0, 4.0]])
    assert identity_loss(x, y).item() == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    with pytest.raises(ValueError, match="shapes differ"):
        identity_loss(x, y[:1])
    t = {k: torch.tensor(v) for k, v in (("dd_source", 1.0), ("dd_translated", 2.0), ("contrast", 3.0),
                                         ("pseudo", 4.0), ("supervised", 5.0), ("identity", 6.0))}
    assert uuds_loss(**t).item() == 21.0  # the paper's weights: all 1
    assert uuds_loss(**t, alpha=0.5, beta=2, gamma=0.1, lam=0).item() == pytest.approx(1.5 + 6 + 0.9)


def test_distribution_matching_by_hand():
    """L_DM is the 1D Wasserstein-1 distance of the intensities, per channel (a shift by c costs |c|)."""
    x = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])                          # (1, 1, 4)
    assert distribution_loss(x + 0.5, x, levels=4).item() == pytest.approx(0.5)
    # the order of the values does not matter, only their distribution
    assert distribution_loss(x.flip(-1), x, levels=4).item() == pytest.approx(0.0)
    # nearest order statistics: levels 0, 1/3, 2/3, 1 of {0,1,2,3} against {0,0,0,6}
    other = torch.tensor([[[6.0, 0.0, 0.0, 0.0]]])
    assert distribution_loss(x, other, levels=4).item() == pytest.approx((0 + 1 + 2 + 3) / 4)
    # batches of different sizes and channels averaged: channel 2 differs by 2, channel 1 by 0
    a = torch.stack([x[0, 0], x[0, 0] + 2])[None]                       # (1, 2, 4)
    b = torch.cat([a, a])                                               # (2, 2, 4)
    assert distribution_loss(a, b - torch.tensor([0.0, 2.0])[None, :, None], levels=4).item() == pytest.approx(1.0)
    # the gradient moves each value toward its quantile's counterpart: a descent step lowers it
    t = (x * 2).requires_grad_(True)
    loss = distribution_loss(t, x, levels=4)
    loss.backward()
    assert torch.allclose(t.grad, torch.tensor([[[0.0, 1.0, 1.0, 1.0]]]) / 4)
    assert distribution_loss((t - 0.5 * t.grad).detach(), x, levels=4) < loss
    for bad, match in (((x, torch.zeros(1, 2, 4)), "channel counts differ"),):
        with pytest.raises(ValueError, match=match):
            distribution_loss(*bad)
    with pytest.raises(ValueError, match="levels"):
        distribution_loss(x, x, levels=1)


def test_start_polarity_inverts_only_a_mirrored_distribution():
    """A skewed source (few bright voxels) against its mirror image starts inverted; a target
    that is the source plus a ramp, plus an offset, the source itself, or the same contrast with
    four times larger objects (a histogram that differs for another reason) starts as is."""
    g = torch.Generator().manual_seed(0)

    def objects(share, n=1000):  # z-scored: `share` of the voxels bright, the rest dark, some noise
        x = torch.cat([torch.zeros(round(n * (1 - share))), torch.ones(round(n * share))])
        x = x + torch.randn(n, generator=g) * 0.05
        return ((x - x.mean()) / x.std())[None, None]

    source = objects(0.1)
    mirrored = 1.0 - source
    gain, offset, record = start_polarity(source, mirrored)
    assert gain == [-1.0] and offset[0] == pytest.approx(float(source.mean() + mirrored.mean()))
    assert record["inverted"][0] < 0.05 < record["as_is"][0] and record["polarity"] == "auto"
    assert torch.allclose(offset[0] - mirrored, source, atol=1e-5)  # the inverted start is the source again
    for target in (source + torch.linspace(0, 1, 1000), source + 5.0, source, objects(0.4)):
        gain, offset, _ = start_polarity(source, target)
        assert (gain, offset) == ([1.0], [0.0])
    # per channel: only the mirrored channel flips; the user's choice overrides the measurement
    gain, _, _ = start_polarity(torch.cat([source, source], 1), torch.cat([source, mirrored], 1))
    assert gain == [1.0, -1.0]
    assert start_polarity(source, mirrored, polarity="as-is")[0] == [1.0]
    assert start_polarity(source, source, polarity="inverted")[0] == [-1.0]
    for kwargs, match in (({"polarity": "flip"}, "polarity must be"),):
        with pytest.raises(ValueError, match=match):
            start_polarity(source, source, **kwargs)
    with pytest.raises(ValueError, match="same C"):
        start_polarity(torch.cat([source] * 3, 1), source)


def test_distribution_matching_refuses_what_it_cannot_measure():
    x = torch.randn(1, 1, 8)
    for bad in (torch.randn(8), torch.zeros(0, 1, 8), torch.zeros(1, 1, 0), torch.ones(1, 1, 8, dtype=torch.long)):
        with pytest.raises(ValueError, match="non-empty floating-point"):
            distribution_loss(bad, x)
    with pytest.raises(ValueError, match="whole number"):
        distribution_loss(x, x, levels=2.5)
