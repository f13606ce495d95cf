"""A mask- and group-conditioned image diffusion model for 2D fundus images (seed 003).

FairDiff paints each generated mask with a ControlNet on Stable Diffusion 1.5 at 512² (20 DDIM
steps, guidance 9). Neither set of weights can be downloaded here, so the model is trained from
scratch on the cohort's own image–mask pairs, with MONAI's generative blocks:

- :class:`monai.networks.nets.DiffusionModelUNet` predicts the noise of an image from the noisy
  image **concatenated with its mask** as three one-hot channels (background, rim, cup) — the
  issue's "concat conditioning", which a model trained from scratch learns more cheaply than a
  ControlNet branch beside a frozen base — and the **group** as the UNet's class embedding
  (``num_class_embeds``);
- training follows DDPM (:class:`~monai.networks.schedulers.DDPMScheduler`, 1000 steps, linear
  β 1e-4 → 0.02); sampling uses seed 003's 20 DDIM steps
  (:class:`~monai.networks.schedulers.DDIMScheduler`, η = 0, deterministic given the noise).
  There is no classifier-free guidance: the conditioning is the mask and group, not a text prompt.

Images are scaled to [−1, 1] with the cohort's intensity range (``low``, ``high``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: the number of mask classes the condition one-hot encodes: background, rim, cup
MASK_CLASSES = 3
TRAIN_STEPS, BETA_START, BETA_END = 1000, 1e-4, 0.02
#: seed 003's DDIM sampling steps
SAMPLE_STEPS = 20


def image_denoiser(channels: int, n_groups: int, width: int) -> nn.Module:
    """MONAI's ``DiffusionModelUNet`` for ``channels``-channel images of ``n_groups`` groups.

    Three levels of ``width``, ``2·width``, ``2·width`` features (attention at the last), one
    residual block each; ``width`` must be a multiple of 8 (group normalisation), inputs a
    multiple of 4 in size.
    """
    from monai.networks.nets import DiffusionModelUNet

    if width % 8:
        raise ValueError(f"width must be a multiple of 8, got {width}")
    return DiffusionModelUNet(spatial_dims=2, in_channels=channels + MASK_CLASSES, out_channels=channels,
                              channels=(width, 2 * width, 2 * width), attention_levels=(False, False, True),
                              num_res_blocks=1, norm_num_groups=8, num_head_channels=8,
                              num_class_embeds=n_groups)


def train_scheduler():
    """DDPM with seed 003's linear β schedule over 1000 steps (the images' training schedule)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_STEPS, schedule="linear_beta", beta_start=BETA_START,
                         beta_end=BETA_END, clip_sample=False)


def sample_scheduler(steps: int = SAMPLE_STEPS):
    """DDIM over the training schedule, ``steps`` inference steps."""
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=TRAIN_STEPS, schedule="linear_beta", beta_start=BETA_START,
                          beta_end=BETA_END, clip_sample=True)
    sched.set_timesteps(steps)
    return sched


def condition(masks: torch.Tensor) -> torch.Tensor:
    """Class maps ``(B, H, W)`` with values 0, 1 (rim), 2 (cup) → one-hot ``(B, 3, H, W)`` floats."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {tuple(masks.shape)}")
    return F.one_hot(masks.long().clamp(0, MASK_CLASSES - 1), MASK_CLASSES).permute(0, 3, 1, 2).float()


def image_loss(model: nn.Module, sched, images: torch.Tensor, masks: torch.Tensor, groups: torch.Tensor, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The DDPM objective on ``images (B, C, H, W)`` in [−1, 1] given their masks and groups."""
    noise = torch.randn(images.shape, generator=generator)
    t = torch.randint(0, sched.num_train_timesteps, (images.shape[0],), generator=generator)
    noisy = sched.add_noise(images, noise, t)
    pred = model(torch.cat([noisy, condition(masks)], dim=1), t, class_labels=groups)
    return F.mse_loss(pred, noise)


@torch.no_grad()
def sample_images(model: nn.Module, masks: torch.Tensor, groups: torch.Tensor, *, channels: int,
                  steps: int = SAMPLE_STEPS, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images ``(B, channels, H, W)`` in [−1, 1] painting ``masks (B, H, W)`` for ``groups (B,)``."""
    was_training = model.training
    model.eval()
    sched = sample_scheduler(steps)
    cond = condition(masks)
    x = torch.randn((masks.shape[0], channels, *masks.shape[1:]), generator=generator)
    for t in sched.timesteps:
        eps = model(torch.cat([x, cond], dim=1), torch.full((len(x),), int(t), dtype=torch.long),
                    class_labels=groups)
        x, _ = sched.step(eps, int(t), x)
    model.train(was_training)
    return x.clamp(-1, 1)
