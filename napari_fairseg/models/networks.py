"""The network registry: MONAI networks behind one frozen :class:`ModelConfig`.

Networks return logits ``(B, out_channels, *spatial)``; the head (sigmoid or softmax) is applied
by the losses and by inference, never inside the network. Inputs whose spatial size a network
cannot take are padded up to :func:`size_divisor` and cropped back (:func:`pad_to_divisible`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..options import HEADS, INTENSITY, MODEL, NETWORKS


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


#: bounds on what a configuration (from a checkpoint, perhaps a hostile one) may ask for: past
#: them a network or one window costs gigabytes before anything can fail cleanly
MAX_CHANNELS, MAX_FEATURES, MAX_PATCH_VOXELS = 64, 1024, 256**3

@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network and feed it data correctly.

    Attributes
    ----------
    network : str
        One of :data:`NETWORKS`. ``light_unet`` is seed 001's two-level 3D U-Net (8 and 16
        features, GroupNorm, ReLU, sigmoid head); ``unet`` a four-level MONAI UNet with residual
        units; ``segresnet`` and ``swinunetr`` the MONAI networks of those names.
    spatial_dims : int
        2 or 3.
    in_channels : int
        Image channels ``C``.
    label_values : tuple of int
        The class-map values the network predicts, background first. A sigmoid head predicts
        exactly two values with one output channel; a softmax head one channel per value.
    head : str
        ``"sigmoid"`` or ``"softmax"``.
    features : tuple of int or None
        Feature widths per level (network default when ``None``).
    dropout : float
        Dropout probability inside the network; > 0 is needed for MC-dropout uncertainty.
    intensity : str
        Per-case, per-channel intensity normalisation: ``zscore``, ``minmax`` (1st–99th
        percentile to [0, 1]) or ``none``.
    patch_size : tuple of int or None
        Training crop and sliding-window size in voxels; ``None`` trains and predicts on whole
        images (padded to :func:`size_divisor`).
    """

    network: str = MODEL["network"]
    spatial_dims: int = 3
    in_channels: int = 1
    label_values: tuple[int, ...] = (0, 1)
    head: str = MODEL["head"]
    features: tuple[int, ...] | None = None
    dropout: float = MODEL["dropout"]
    intensity: str = MODEL["intensity"]
    patch_size: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        _check_choice("network", self.network, NETWORKS)
        _check_choice("head", self.head, HEADS)
        _check_choice("intensity", self.intensity, INTENSITY)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.network == "light_unet" and self.spatial_dims != 3:
            raise ValueError("light_unet is a 3D network; use network='unet' for 2D images")
        vals = tuple(int(v) for v in self.label_values)
        object.__setattr__(self, "label_values", vals)
        if len(vals) < 2 or len(set(vals)) != len(vals) or vals[0] != 0:
            raise ValueError(f"label_values must start with background 0 and hold >= 2 distinct values, got {vals}")
        if self.head == "sigmoid" and len(vals) != 2:
            raise ValueError(f"a sigmoid head predicts exactly two label values, got {vals}; use head='softmax'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 1 <= self.in_channels <= MAX_CHANNELS:
            raise ValueError(f"in_channels must be 1 … {MAX_CHANNELS}, got {self.in_channels}")
        if self.features is not None:
            feats = tuple(int(f) for f in self.features)
            if not feats or min(feats) < 1 or max(feats) > MAX_FEATURES or len(feats) > 8:
                raise ValueError(f"features must be 1 to 8 widths of 1 … {MAX_FEATURES}, got {self.features}")
            object.__setattr__(self, "features", feats)
        if self.patch_size is not None:
            ps = tuple(int(p) for p in self.patch_size)
            if len(ps) != self.spatial_dims or min(ps) < 1:
                raise ValueError(f"patch_size must have {self.spatial_dims} positive sizes, got {self.patch_size}")
            if math.prod(ps) > MAX_PATCH_VOXELS:  # a checkpoint's config must not cost gigabytes per window
                raise ValueError(f"patch_size {ps} holds over {MAX_PATCH_VOXELS} voxels")
            div = size_divisor(self)
            if any(p % div for p in ps):
                raise ValueError(f"patch_size {ps} must be a multiple of {div} for network {self.network!r}")
            object.__setattr__(self, "patch_size", ps)
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a mapping, got {type(self.extra).__name__}")
        if "uuds" in self.extra:  # an adapted model (seed 002): its options must be valid
            from .uuds import UUDSOptions

            UUDSOptions.from_dict(self.extra["uuds"])

    @property
    def out_channels(self) -> int:
        return 1 if self.head == "sigmoid" else len(self.label_values)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("network", "spatial_dims", "in_channels", "head", "dropout", "intensity")}
        d["label_values"] = list(self.label_values)
        d["features"] = None if self.features is None else list(self.features)
        d["patch_size"] = None if self.patch_size is None else list(self.patch_size)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("label_values", "features", "patch_size"):
            if known.get(k) is not None:
                known[k] = tuple(known[k])
        return cls(**known)

    def replace(self, **changes) -> ModelConfig:
        return replace(self, **changes)


def _default_features(config: ModelConfig) -> tuple[int, ...]:
    return {"light_unet": (8, 16), "unet": (16, 32, 64, 128), "segresnet": (8,), "swinunetr": (12,)}[config.network]


def size_divisor(config: ModelConfig) -> int:
    """Spatial sizes the network takes must be multiples of this."""
    feats = config.features or _default_features(config)
    if config.network in ("light_unet", "unet"):
        base = 2 ** (len(feats) - 1)
    else:
        base = 8 if config.network == "segresnet" else 32
    if "uuds" in config.extra:
        from .uuds import ENCODER_STRIDE

        return math.lcm(base, ENCODER_STRIDE)
    return base


def build_network(config: ModelConfig) -> nn.Module:
    """Instantiate the MONAI network that ``config`` describes (random initial weights).

    A config whose ``extra`` holds ``"uuds"`` options gives that network wrapped in seed 002's
    :class:`~.uuds.UUDSNet` (an adapted model).
    """
    if "uuds" in config.extra:
        from .uuds import UUDSNet, UUDSOptions

        plain = config.replace(extra={k: v for k, v in config.extra.items() if k != "uuds"})
        return UUDSNet(build_network(plain), spatial_dims=config.spatial_dims, in_channels=config.in_channels,
                       out_channels=config.out_channels, options=UUDSOptions.from_dict(config.extra["uuds"]))
    from monai.networks import nets

    feats = config.features or _default_features(config)
    common = {"spatial_dims": config.spatial_dims, "in_channels": config.in_channels,
              "out_channels": config.out_channels}
    if config.network == "light_unet":
        groups = max(1, min(4, feats[0]))
        return nets.UNet(channels=feats, strides=(2,) * (len(feats) - 1), num_res_units=0, act="RELU",
                         norm=("group", {"num_groups": groups}), dropout=config.dropout, **common)
    if config.network == "unet":
        return nets.UNet(channels=feats, strides=(2,) * (len(feats) - 1), num_res_units=2,
                         norm="instance", dropout=config.dropout, **common)
    if config.network == "segresnet":
        return nets.SegResNet(init_filters=feats[0], dropout_prob=config.dropout or None, **common)
    if feats[0] % 12:
        raise ValueError(f"swinunetr feature size must be a multiple of 12, got {feats[0]}")
    return nets.SwinUNETR(feature_size=feats[0], drop_rate=config.dropout, **common)


def pad_to_divisible(x: torch.Tensor, divisor: int, *, minimum: Sequence[int] | None = None
                     ) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of ``x`` ``(B, C, *S)`` up to multiples of ``divisor``.

    Returns the padded tensor and the index that crops an output of the padded size back to
    ``S`` (``out[crop]``). ``minimum`` raises each padded size to at least that many voxels.
    """
    spatial = x.shape[2:]
    target = [int(np.ceil(s / divisor) * divisor) for s in spatial]
    if minimum is not None:
        target = [max(t, int(np.ceil(m / divisor) * divisor)) for t, m in zip(target, minimum, strict=True)]
    before = [(t - s) // 2 for t, s in zip(target, spatial, strict=True)]
    after = [t - s - b for t, s, b in zip(target, spatial, before, strict=True)]
    pads = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pads += [b, a]
    crop = (slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, spatial, strict=True)))
    if any(pads):
        x = F.pad(x, pads)
    return x, crop


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
