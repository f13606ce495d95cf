"""Seed 002's losses (UUDS Eq. 1–2, 4, 9) against hand computations, values and gradients."""

import math

import pytest
import torch

from napari_fairseg.training.adaptation import (
    batch_contrastive_loss,
    domain_distillation_loss,
    identity_loss,
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
