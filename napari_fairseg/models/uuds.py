"""Seed 002's networks (UUDS): a segmenter behind a target→source translator and a prompt head.

:class:`UUDSNet` wraps any registry network (the *segmenter*, :func:`~.networks.build_network`)
with the parts of seed 002 §3.1, built from MONAI blocks (no CLIP: its weights cannot be
downloaded here, and the issue makes a local CLIP optional — it is not implemented):

- an **image encoder** (two stride-2 convolutions, no normalisation, so that intensity style
  survives) with two 1×1 heads: content features ``X_c`` and domain features ``X_d``, both
  ``(B, W, *S/4)``; the global domain feature ``x_g`` is the spatial mean of ``X_d``;
- the **domain prompt** ``T^d``: a learnable ``(W,)`` embedding (the paper encodes
  "A photo of a [source domain]" with CLIP's text encoder; a learnable vector is the issue's
  default);
- the **Domain Adaptation Module** (Eq. 3), ``x^d = softmax(Q Kᵀ / d) Nor(V)`` with ``Q`` a
  projection of ``T^d``, ``K`` of ``X_d``, ``V`` of ``X_c``, ``Nor`` instance normalisation (no
  affine: it removes each image's feature mean and variance, its style) and ``d`` a learnable
  scale. The paper gives ``Q ∈ R^c`` and ``K, V ∈ R^{c×h×w}`` and feeds ``x^d`` to a decoder, so
  the softmax runs over positions and weights each position of ``Nor(V)``: we multiply by the
  number of positions, so that uniform attention is the identity, which keeps ``x^d``
  ``(B, W, *S/4)``. Without a domain prompt (the ablation) ``x^d = Nor(V)``;
- a **decoder** (residual units at ``S/4``) giving the target→source translation ``x^{t→s}``
  and the source reconstruction ``x̃^s``; the segmenter sees ``x^{t→s}``. Unlike the paper's
  image decoder, ours outputs two smooth fields, a gain ``a`` and an offset ``b`` per channel,
  interpolated to the image's size: ``x^{t→s} = x ⊙ (1 + a) + b``. The translation can change
  contrast (an inversion included) and a bias field but cannot add or move structure: with the
  paper's image decoder our from-scratch encoder was satisfied by chequerboard patterns that
  left the target's shift in place (README › Benchmarks › Cross-domain adaptation). The last
  convolution starts at zero, so translation starts as the identity and an adapted model as
  its source model; ``L_id`` keeps the source's fields near zero;
- the **segmentation prompt** ``T^s``: ``M`` learnable context vectors (CoOp style) fused with
  the normalised content ``Nor(X_c)`` of the image being segmented (at inference, the
  translation) by a segmentation attention module (each context vector attends over
  positions, Q from the context, K and V from the content, as in Eq. 3); their mean is the
  image's prompt token, whose MLP projection ``z`` enters the in-batch contrast (Eq. 4) and
  whose per-class linear maps dot each position of ``Nor(X_c)`` (SAM's mask head) into logits
  added to the segmenter's, with a learnable gate that starts at 0: an adapted model starts as
  its source model.

A **target pre-map** (ours), ``gain · x + offset`` per channel held in the ``target_map``
buffer, comes before the translation of target images: the identity, or an inversion that
:func:`~napari_fairseg.training.adaptation.start_polarity` chooses before training (a smooth
gain cannot learn to invert contrast by descent). It is part of the checkpoint; an adapted
model is for the target's images, and :meth:`UUDSNet.on_source_images` turns the pre-map off
for source images (validation on the source cohort).

``forward(x)`` is inference: segmenter(translate(premap(x))) + gate · prompt logits, ``(B, K, *S)``.
``forward(x_source, target=x_target)`` returns every term seed 002's total loss needs.
The configuration lives in ``ModelConfig.extra["uuds"]`` (:class:`UUDSOptions`), so a checkpoint
of an adapted model rebuilds and predicts like any other.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: the downsampling of the encoder: inputs must be multiples of this
ENCODER_STRIDE = 4


@dataclass(frozen=True)
class UUDSOptions:
    """How a :class:`UUDSNet` is built (stored in ``ModelConfig.extra["uuds"]``).

    Attributes
    ----------
    width : int
        Channels ``W`` of the encoder, prompts and decoder.
    context : int
        ``M``, the segmentation prompt's context vectors.
    domain_prompt, segmentation_prompt : bool
        Whether the domain prompt (``T^d``, ``L_DD``, the DAM's attention) and the segmentation
        prompt (``T^s``, ``L_BSCL``, the prompt head) exist — seed 002 Table 3's ablations.
    source, target : str
        Names of the source and target domains (cohort names), for the record.
    """

    width: int = 16
    context: int = 4
    domain_prompt: bool = True
    segmentation_prompt: bool = True
    source: str = ""
    target: str = ""

    def __post_init__(self):
        for name, top in (("width", 256), ("context", 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"uuds {name} must be a whole number 1 … {top}, got {value!r}")
        for name in ("domain_prompt", "segmentation_prompt"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"uuds {name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "target", str(self.target))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UUDSOptions:
        if not isinstance(d, dict):
            raise ValueError(f"uuds options must be a mapping, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown uuds options {sorted(unknown)}")
        return cls(**d)


def _conv(spatial_dims: int):
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``(B, W, *S)`` → ``(B, N, W)`` with ``N`` positions."""
    return x.flatten(2).transpose(1, 2)


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``Nor``: each image's channels to zero mean, unit variance over positions."""
    dims = tuple(range(2, x.ndim))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


class Encoder(nn.Module):
    """``x (B, C, *S)`` → content ``X_c`` and domain ``X_d`` features ``(B, W, *S/4)``."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int):
        super().__init__()
        conv = _conv(spatial_dims)
        self.stem = nn.Sequential(conv(in_channels, width, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                                  conv(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                                  conv(width, width, 3, padding=1), nn.LeakyReLU(0.1))
        self.content = conv(width, width, 1)
        self.domain = conv(width, width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        return self.content(h), self.domain(h)


class CrossAttention(nn.Module):
    """Queries ``(B|1, M, W)`` attend over positions of key/value maps ``(B, W, *S)``.

    ``softmax(Q Kᵀ / d)`` over positions, ``d`` a learnable scale (seed 002 Eq. 3). Returns the
    attention ``(B, M, N)``; the projections are 1×1 convolutions (linear maps), as in the paper.
    """

    def __init__(self, spatial_dims: int, width: int):
        super().__init__()
        conv = _conv(spatial_dims)
        self.q = nn.Linear(width, width)
        self.k = conv(width, width, 1)
        self.v = conv(width, width, 1)
        self.log_d = nn.Parameter(torch.tensor(math.log(math.sqrt(width))))

    def weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.q(queries)                                         # (B|1, M, W)
        k = _flat(self.k(keys))                                     # (B, N, W)
        return torch.softmax(q @ k.transpose(1, 2) / self.log_d.exp(), dim=-1)  # (B, M, N)


class DomainAdaptation(nn.Module):
    """The DAM: ``x^d = N · softmax(q Kᵀ / d) ⊙ Nor(V)`` per position, ``(B, W, *S)``."""

    def __init__(self, spatial_dims: int, width: int, *, prompt: bool):
        super().__init__()
        self.attention = CrossAttention(spatial_dims, width)
        self.prompt = nn.Parameter(torch.randn(width)) if prompt else None

    def forward(self, content: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        v = instance_norm(self.attention.v(content))
        if self.prompt is None:
            return v
        a = self.attention.weights(self.prompt[None, None], domain)     # (B, 1, N)
        n = a.shape[-1]
        return v * (n * a).reshape(v.shape[0], 1, *v.shape[2:])


class Decoder(nn.Module):
    """``x^d (B, W, *S/4)`` → a smooth gain and offset ``(B, 2C, *S/4)`` (residual units at S/4)."""

    def __init__(self, spatial_dims: int, out_channels: int, width: int):
        super().__init__()
        conv = _conv(spatial_dims)
        self.blocks = nn.ModuleList([nn.Sequential(conv(width, width, 3, padding=1), nn.LeakyReLU(0.1),
                                                   conv(width, width, 3, padding=1)) for _ in range(2)])
        self.out = conv(width, 2 * out_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = F.leaky_relu(x + block(x), 0.1)
        return self.out(x)


class SegmentationPrompt(nn.Module):
    """``T^s``: ``M`` context vectors fused with ``Nor(X_c)``; gives ``z`` and mask logits."""

    def __init__(self, spatial_dims: int, width: int, context: int, out_channels: int):
        super().__init__()
        self.context = nn.Parameter(torch.randn(context, width) * 0.02)
        self.attention = CrossAttention(spatial_dims, width)
        self.project = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.mask = nn.Linear(width, width * out_channels)
        self.gate = nn.Parameter(torch.zeros(()))
        self.width, self.out_channels = width, out_channels

    def forward(self, content: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``z (B, W)`` and logits ``(B, K, *size)`` (gate applied)."""
        feats = instance_norm(content)
        a = self.attention.weights(self.context[None], feats)            # (B, M, N)
        tokens = a @ _flat(self.attention.v(feats))                      # (B, M, W)
        token = tokens.mean(dim=1)                                       # (B, W)
        z = self.project(token)
        kernels = self.mask(token).reshape(-1, self.out_channels, self.width)
        logits = torch.einsum("bkw,bw...->bk...", kernels, feats) / math.sqrt(self.width)
        mode = "trilinear" if feats.ndim == 5 else "bilinear"
        logits = F.interpolate(logits, size=tuple(size), mode=mode, align_corners=False)
        return z, self.gate * logits


class UUDSNet(nn.Module):
    """A segmenter adapted to a target domain the UUDS way (see the module docstring)."""

    def __init__(self, segmenter: nn.Module, *, spatial_dims: int, in_channels: int, out_channels: int,
                 options: UUDSOptions):
        super().__init__()
        w = options.width
        self.options = options
        self.segmenter = segmenter
        self.encoder = Encoder(spatial_dims, in_channels, w)
        self.adapt = DomainAdaptation(spatial_dims, w, prompt=options.domain_prompt)
        self.decoder = Decoder(spatial_dims, in_channels, w)
        self.prompt = (SegmentationPrompt(spatial_dims, w, options.context, out_channels)
                       if options.segmentation_prompt else None)
        self.register_buffer("target_map", torch.tensor([[1.0] * in_channels, [0.0] * in_channels]))
        self._source_images = False

    def start_translation(self, gain, offset) -> None:
        """Set the target images' intensity pre-map, ``gain · x + offset`` per channel, applied
        before the learned translation (:func:`~napari_fairseg.training.adaptation.start_polarity`
        chooses it; the identity by default). It is part of the model: an adapted model segments
        target-domain images."""
        c = self.target_map.shape[1]
        if len(gain) != c or len(offset) != c:
            raise ValueError(f"gain and offset need {c} value(s), one per channel")
        if not all(math.isfinite(float(v)) for v in (*gain, *offset)):
            raise ValueError(f"gain and offset must be finite, got {list(gain)} and {list(offset)}")
        with torch.no_grad():
            self.target_map.copy_(torch.tensor([list(gain), list(offset)], dtype=torch.float32))

    @contextmanager
    def on_source_images(self):
        """Within this block the model segments *source*-domain images: the target pre-map is
        off (validation on the source cohort); the learned translation stays."""
        saved, self._source_images = self._source_images, True
        try:
            yield self
        finally:
            self._source_images = saved

    def _premap(self, x: torch.Tensor) -> torch.Tensor:
        if self._source_images:
            return x
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.target_map[0].reshape(shape).to(x.dtype) + self.target_map[1].reshape(shape).to(x.dtype)

    def translate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` as a source-domain image, its content features and its global domain feature.

        ``x^{t→s} = x ⊙ (1 + a) + b`` with the gain ``a`` and offset ``b`` the decoder's two
        fields at ``S/4``, interpolated (linearly) to ``x``'s size: a smooth, per-channel
        intensity correction that cannot add or move structure.
        """
        content, domain = self.encoder(x)
        field = self.decoder(self.adapt(content, domain))
        field = F.interpolate(field, size=x.shape[2:], mode="trilinear" if x.ndim == 5 else "bilinear",
                              align_corners=False)
        gain, offset = field.chunk(2, dim=1)
        return x * (1 + gain) + offset, content, domain.flatten(2).mean(-1)

    def _segment(self, image: torch.Tensor, content: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Segmenter logits of ``image`` plus the prompt head's on ``image``'s content features
        (``content`` when already computed), and ``z``."""
        logits = self.segmenter(image)
        if self.prompt is None:
            return logits, None
        content = self.encoder(image)[0] if content is None else content
        z, extra = self.prompt(content, logits.shape[2:])
        return logits + extra, z

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        """Inference logits ``(B, K, *S)`` of ``x``; with ``target``, the training terms.

        With ``target`` (``x`` the labelled source batch), returns a dict: ``source_logits``
        (of ``x`` itself, for ``L_seg``), ``target_logits`` (of ``x^{t→s}``, for ``L_useg``,
        through the segmentation branch with its weights held: the pseudo-labels train the
        translator only), ``z`` (source prompt embeddings or ``None``), ``reconstruction``
        (``x̃^s``), ``translated`` (``x^{t→s}``) and the global domain features ``g_source``,
        ``g_target``, ``g_translated`` (through the encoder with its weights held: its gradient
        reaches the translator only) with the ``prompt`` ``T^d`` (``None`` without a domain prompt).
        """
        if target is None:
            return self._segment(self.translate(self._premap(x))[0])[0]
        reconstruction, c_s, g_s = self.translate(x)
        translated, _, g_t = self.translate(self._premap(target))
        # Eq. 2 trains the translator only: the encoder judges x^{t→s} with its weights held
        # (Eq. 1 trains it and the prompt to tell source from target), else encoder and translator
        # could agree on features that call any translation "source" without changing the image
        _, d_ts = _held(self.encoder, translated)
        source_logits, z = self._segment(x, c_s)
        # self-training the segmenter on its own target predictions confirmed its errors (README
        # › Benchmarks › Cross-domain adaptation): the target's pseudo-labels move the translator
        target_logits = _held(self.segmenter, translated)
        if self.prompt is not None:
            target_logits = target_logits + _held(self.prompt, _held(self.encoder, translated)[0],
                                                   target_logits.shape[2:])[1]
        return {"source_logits": source_logits, "target_logits": target_logits, "z": z,
                "reconstruction": reconstruction, "translated": translated, "g_source": g_s, "g_target": g_t,
                "g_translated": d_ts.flatten(2).mean(-1), "prompt": self.adapt.prompt}


def _held(module: nn.Module, *args):
    """``module(*args)`` with its parameters detached: gradients reach the inputs only."""
    held = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, held, args)
