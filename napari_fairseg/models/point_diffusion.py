"""A point-cloud diffusion model of disc/cup outlines, conditioned on the group (seed 003).

FairDiff trains one point-cloud diffusion model per group (after Luo & Hu 2021) on the outline
clouds of :mod:`napari_fairseg.data.points`, with 100 steps and a linear β from 1e-4 to 0.02.
Here **one** model serves every group through a learned group embedding (the issue allows it:
groups with few cases share what outlines have in common, and one checkpoint holds them all).
The noise schedule and the sampling loop are MONAI's (:class:`monai.networks.schedulers.DDPMScheduler`).

:class:`PointDenoiser` predicts the noise of every point from the point, the global shape
feature of the whole noisy cloud (PointNet-style max pooling, so that points agree on one
shape), the time step and the group. Clouds are normalised to about [−1, 1]
(:func:`normalise` / :func:`denormalise`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

#: seed 003's schedule
STEPS, BETA_START, BETA_END = 100, 1e-4, 0.02


def scheduler(steps: int = STEPS):
    """MONAI's DDPM scheduler with seed 003's linear β schedule."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=steps, schedule="linear_beta", beta_start=BETA_START,
                         beta_end=BETA_END, clip_sample=False)


def normalise(points: np.ndarray, shape: tuple[int, int], z0: float) -> np.ndarray:
    """``(N, 3)`` pixel clouds → x, y in [−1, 1] over the image, z in {−1, +1}."""
    if not 0 < z0 < float("inf"):
        raise ValueError(f"z0 must be a finite number > 0, got {z0!r}")
    h, w = shape
    out = np.asarray(points, np.float32).copy()
    out[..., 0] = out[..., 0] / max(w - 1, 1) * 2 - 1
    out[..., 1] = out[..., 1] / max(h - 1, 1) * 2 - 1
    out[..., 2] = out[..., 2] / z0
    return out


def denormalise(points: np.ndarray, shape: tuple[int, int], z0: float) -> np.ndarray:
    """The inverse of :func:`normalise`; z is snapped to ±z0 (its sign says disc or cup)."""
    h, w = shape
    out = np.asarray(points, np.float32).copy()
    out[..., 0] = (out[..., 0] + 1) / 2 * max(w - 1, 1)
    out[..., 1] = (out[..., 1] + 1) / 2 * max(h - 1, 1)
    out[..., 2] = np.where(out[..., 2] < 0, -z0, z0)
    return out


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / max(half - 1, 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class PointDenoiser(nn.Module):
    """ε-prediction for clouds ``(B, N, 3)`` at steps ``t`` ``(B,)`` of groups ``(B,)`` (int)."""

    def __init__(self, n_groups: int, width: int = 128):
        super().__init__()
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1 or width < 4:
            raise ValueError(f"need n_groups >= 1 and width >= 4, got {n_groups}, {width}")
        self.width = width
        self.group = nn.Embedding(n_groups, width)
        self.context = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.local = nn.Sequential(nn.Linear(3 + width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.out = nn.Sequential(nn.Linear(3 * width, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 3))

    def forward(self, x: torch.Tensor, t: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        ctx = self.context(torch.cat([_time_embedding(t, self.width), self.group(group)], dim=1))  # (B, W)
        ctx_n = ctx[:, None].expand(-1, x.shape[1], -1)
        h = self.local(torch.cat([x, ctx_n], dim=-1))                       # (B, N, W)
        shape = h.max(dim=1, keepdim=True).values.expand_as(h)              # the whole cloud
        return self.out(torch.cat([h, shape, ctx_n], dim=-1))


def diffusion_loss(model: PointDenoiser, sched, clouds: torch.Tensor, groups: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The DDPM objective: MSE between the noise added at a random step and its prediction."""
    noise = torch.randn(clouds.shape, generator=generator, device=clouds.device)
    t = torch.randint(0, sched.num_train_timesteps, (clouds.shape[0],), generator=generator, device=clouds.device)
    noisy = sched.add_noise(clouds, noise, t)
    return torch.mean((model(noisy, t, groups) - noise) ** 2)


@torch.no_grad()
def sample(model: PointDenoiser, sched, group: int, *, n: int, n_points: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` clouds ``(n, n_points, 3)`` of ``group`` by the scheduler's reverse process."""
    if not 0 <= int(group) < model.group.num_embeddings:
        raise ValueError(f"group index {group} is not one of the model's {model.group.num_embeddings} groups")
    was_training = model.training
    model.eval()
    x = torch.randn((n, n_points, 3), generator=generator)
    groups = torch.full((n,), int(group), dtype=torch.long)
    sched.set_timesteps(sched.num_train_timesteps)
    for t in sched.timesteps:
        eps = model(x, torch.full((n,), int(t), dtype=torch.long), groups)
        x, _ = sched.step(eps, int(t), x, generator=generator)
    model.train(was_training)
    return x
