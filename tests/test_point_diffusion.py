"""The group-conditioned point-cloud diffusion model of seed 003 (models/point_diffusion.py)."""

import numpy as np
import pytest
import torch

from napari_fairseg.data.points import mask_to_points, points_to_mask
from napari_fairseg.models.point_diffusion import (
    PointDenoiser,
    denormalise,
    diffusion_loss,
    normalise,
    sample,
    scheduler,
)


def test_the_schedule_is_seed_003s():
    s = scheduler()
    assert s.num_train_timesteps == 100
    np.testing.assert_allclose(s.betas.numpy(), np.linspace(1e-4, 0.02, 100), rtol=1e-5)
    # ᾱ_t by hand: the product of (1 − β) up to t
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 100)), rtol=1e-5)


def test_normalise_round_trip_and_z_sign():
    label = np.zeros((64, 80), np.int16)
    yy, xx = np.mgrid[:64, :80]
    label[(yy - 30) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = 1
    label[(yy - 30) ** 2 + (xx - 40) ** 2 <= 6 ** 2] = 2
    pts = mask_to_points(label, n_points=256)
    norm = normalise(pts, label.shape, 5.0)
    assert norm[:, :2].min() >= -1 and norm[:, :2].max() <= 1 and set(np.unique(norm[:, 2])) == {-1.0, 1.0}
    back = denormalise(norm + np.float32(0.01) * np.sign(norm), label.shape, 5.0)  # z off ±1: snapped back
    np.testing.assert_allclose(back[:, :2], pts[:, :2], atol=1.0)
    assert (points_to_mask(back, label.shape) == 2).sum() > 0.8 * (label == 2).sum()


def _circle(radius, n, rng):
    a = rng.uniform(0, 2 * np.pi, n)
    return np.column_stack([radius * np.cos(a), radius * np.sin(a), -np.ones(n)]).astype(np.float32)


def test_a_tiny_model_learns_each_groups_shape_and_samples_it():
    """Group 0's outlines are circles of radius 0.6, group 1's of 0.2: after a short training the
    scheduler's reverse process draws each group's size, and the training loss falls."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model, sched = PointDenoiser(n_groups=2, width=32), scheduler()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(1000):
        groups = torch.tensor(rng.integers(0, 2, 16))
        clouds = torch.stack([torch.from_numpy(_circle(0.6 if g == 0 else 0.2, 64, rng)) for g in groups.tolist()])
        loss = diffusion_loss(model, sched, clouds, groups, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-50:]) < 0.6 * np.mean(losses[:50])
    radius = {}
    for g in (0, 1):
        x = sample(model, sched, g, n=4, n_points=64, generator=torch.Generator().manual_seed(1))
        assert x.shape == (4, 64, 3) and torch.isfinite(x).all()
        radius[g] = float(torch.linalg.norm(x[..., :2], dim=-1).median())
        assert float((x[..., 2] < 0).float().mean()) > 0.9  # the z mark (disc) is learned too
    assert radius[0] == pytest.approx(0.6, abs=0.15) and radius[1] == pytest.approx(0.2, abs=0.15), radius


def test_bad_settings():
    with pytest.raises(ValueError, match="n_groups"):
        PointDenoiser(n_groups=0)
