"""Seed 002's networks (models/uuds.py): shapes, the DAM's equation by hand, checkpoints, bad options."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_fairseg.errors import InputDataError
from napari_fairseg.models.checkpoint import load_checkpoint, save_checkpoint
from napari_fairseg.models.networks import ModelConfig, build_network, size_divisor
from napari_fairseg.models.uuds import DomainAdaptation, UUDSNet, UUDSOptions, instance_norm


def _config(dims=3, **options):
    return ModelConfig(network="light_unet" if dims == 3 else "unet", spatial_dims=dims, features=(4, 8),
                       extra={"uuds": UUDSOptions(width=8, **options).to_dict()})


@pytest.mark.parametrize("dims", [2, 3])
def test_an_adapted_network_predicts_and_returns_every_training_term(dims):
    torch.manual_seed(0)
    net = build_network(_config(dims))
    assert isinstance(net, UUDSNet) and size_divisor(_config(dims)) == 4
    size = (16, 12, 8)[:dims]
    x, t = torch.randn(3, 1, *size), torch.randn(2, 1, *size)
    assert net(x).shape == (3, 1, *size)
    out = net(x, target=t)
    assert out["source_logits"].shape == (3, 1, *size) and out["target_logits"].shape == (2, 1, *size)
    assert out["reconstruction"].shape == x.shape and out["translated"].shape == t.shape
    assert out["g_source"].shape == (3, 8) and out["g_translated"].shape == (2, 8) and out["z"].shape == (3, 8)
    # every part gets a gradient from the training terms
    loss = sum(v.float().mean() for k, v in out.items() if isinstance(v, torch.Tensor) and k != "prompt")
    loss.backward()
    for part in ("encoder", "decoder", "segmenter", "adapt"):
        assert all(p.grad is not None for p in getattr(net, part).parameters()), part
    # the prompt head's gate starts at 0: an adapted model starts as segmenter(translation)
    with torch.no_grad():
        assert torch.allclose(net(x), net.segmenter(net.translate(x)[0]))
        net.prompt.gate.fill_(1.0)
        assert not torch.allclose(net(x), net.segmenter(net.translate(x)[0]))


def test_target_pseudo_labels_reach_the_translator_only():
    """L_useg on target_logits moves the translator (encoder, DAM, decoder), never the
    segmenter or the prompt head: self-training them confirmed the source model's errors."""
    torch.manual_seed(0)
    net = build_network(_config(2))
    with torch.no_grad():
        net.prompt.gate.fill_(1.0)
        net.decoder.out.weight.normal_(0, 0.1)  # a translation that depends on the image
    out = net(torch.randn(2, 1, 16, 16), target=torch.randn(2, 1, 16, 16))
    out["target_logits"].sum().backward()
    for part in ("segmenter", "prompt"):
        assert all(p.grad is None for p in getattr(net, part).parameters()), part
    assert all(p.grad is not None for p in net.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())


def test_translation_is_a_smooth_gain_and_offset_that_keeps_structure():
    """x^{t→s} = x ⊙ (1 + a) + b with a, b interpolated from S/4: identity at the start, and
    wherever the image is constant the translation is constant up to the smooth fields."""
    torch.manual_seed(0)
    net = build_network(_config(2))
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(net.translate(x)[0], x)  # the decoder's last convolution starts at zero
    with torch.no_grad():
        net.decoder.out.weight.normal_(0, 0.5)
        net.decoder.out.bias.copy_(torch.tensor([0.5, -1.0]))
        y = net.translate(x)[0]
        fields = F.interpolate(net.decoder(net.adapt(*net.encoder(x))), size=(16, 16), mode="bilinear",
                               align_corners=False)
    assert torch.allclose(y, x * (1 + fields[:, :1]) + fields[:, 1:], atol=1e-6)
    # the fields vary slowly: neighbouring pixels differ far less than the image's own pixels do
    step = (fields[..., 1:] - fields[..., :-1]).abs().mean()
    assert step < 0.5 * (x[..., 1:] - x[..., :-1]).abs().mean()


def test_the_target_pre_map_inverts_targets_at_inference_and_is_saved(tmp_path):
    """start_translation sets gain · x + offset for target images (inference and the target
    branch), not the source reconstruction; it travels in the checkpoint."""
    torch.manual_seed(0)
    cfg = _config(2)
    net = build_network(cfg).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        net.prompt.gate.fill_(1.0)
        plain = net(x)
        net.start_translation([-1.0], [0.5])
        assert torch.allclose(net(x), net._segment(0.5 - x)[0], atol=1e-6)
        assert not torch.allclose(net(x), plain)
        out = net(x, target=x)
        assert torch.allclose(out["translated"], 0.5 - x) and torch.allclose(out["reconstruction"], x)
    save_checkpoint(tmp_path / "a.pt", net, cfg, {"classes": {"object": [1]}})
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "a.pt").build().eval()(x), net(x))
    with pytest.raises(ValueError, match="one per channel"):
        net.start_translation([-1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        net.start_translation([float("nan")], [0.0])
    # source images (validation on the source cohort) are segmented without the pre-map
    with torch.no_grad(), net.on_source_images():
        assert torch.allclose(net(x), plain)
    with torch.no_grad():
        assert torch.allclose(net(x), net._segment(0.5 - x)[0], atol=1e-6)  # and it is back after the block


def test_damaged_or_older_adapted_checkpoints_are_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    cfg = _config(2)
    save_checkpoint(tmp_path / "a.pt", build_network(cfg), cfg, {"classes": {"object": [1]}})
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    weights = payload["state_dict"]
    older = {k: v for k, v in weights.items() if k != "target_map"}  # before the pre-map and the smooth fields
    older["decoder.blocks.0.up.weight"] = torch.zeros(8, 8, 2, 2)
    for name, state, match in (
            ("older.pt", older, r"adapted \(fairseg adapt\) by an earlier version"),
            ("nan.pt", {**weights, "target_map": torch.tensor([[float("nan")], [0.0]])}, "NaN or infinite"),
            ("shape.pt", {**weights, "target_map": torch.ones(3, 1)}, "target_map")):
        torch.save({**payload, "state_dict": state}, tmp_path / name)
        with pytest.raises(InputDataError, match=match) as info:
            load_checkpoint(tmp_path / name).build()
        assert name in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


def test_ablations_drop_their_parts():
    plain = build_network(_config(domain_prompt=False, segmentation_prompt=False))
    assert plain.adapt.prompt is None and plain.prompt is None
    out = plain(torch.randn(2, 1, 8, 8, 8), target=torch.randn(2, 1, 8, 8, 8))
    assert out["z"] is None and out["prompt"] is None


def test_instance_norm_matches_torch():
    x = torch.randn(2, 5, 6, 7, 4) * 3 + 2
    assert torch.allclose(instance_norm(x), F.instance_norm(x), atol=1e-5)


def test_domain_adaptation_module_by_hand():
    """Eq. 3: x^d = N · softmax_positions(q·k / d) ⊙ Nor(V), here with identity projections."""
    torch.manual_seed(1)
    dam = DomainAdaptation(2, 2, prompt=True)
    att = dam.attention
    with torch.no_grad():
        for conv in (att.k, att.v):
            conv.weight.copy_(torch.eye(2)[:, :, None, None])
            conv.bias.zero_()
        att.q.weight.copy_(torch.eye(2))
        att.q.bias.zero_()
        att.log_d.fill_(math.log(2.0))
        dam.prompt.copy_(torch.tensor([1.0, 0.0]))
    content = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]]])            # (1, 2, 1, 2): channel 1 constant
    domain = torch.tensor([[[[0.0, 2.0]], [[5.0, -5.0]]]])
    out = dam(content, domain)
    # q·k per position: 0 and 2, / d = 2 → softmax([0, 1]); N = 2
    w = torch.softmax(torch.tensor([0.0, 1.0]), 0) * 2
    v = torch.tensor([[-1.0, 1.0], [0.0, 0.0]]) / torch.sqrt(torch.tensor(1.0 + 1e-5))  # Nor: mean 2, var 1
    assert torch.allclose(out[0, :, 0, :], v * w, atol=1e-5)
    # uniform attention (equal keys) leaves Nor(V) as it is
    flat = dam(content, torch.ones_like(domain))
    assert torch.allclose(flat, instance_norm(content), atol=1e-5)


def test_adapted_checkpoint_round_trip_and_hostile_options(tmp_path):
    torch.manual_seed(0)
    cfg = _config()
    net = build_network(cfg)
    save_checkpoint(tmp_path / "a.pt", net, cfg, {"classes": {"caudate": [1]}})
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt.config.extra["uuds"]["width"] == 8
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(ckpt.build().eval()(x), net.eval()(x))
    for bad, match in (({"width": 0}, "width"), ({"width": float("inf")}, "width"), ({"width": True}, "width"),
                       ({"context": 2.5}, "context"), ({"colour": 1}, "unknown uuds options"),
                       ({"domain_prompt": "yes"}, "true or false")):
        with pytest.raises(ValueError, match=match):
            ModelConfig(extra={"uuds": bad})
    with pytest.raises(ValueError, match="mapping"):
        ModelConfig(extra={"uuds": "width=8"})
    with pytest.raises(ValueError, match="extra must be a mapping"):
        ModelConfig(extra="uuds")
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    payload["config"] = payload["config"].replace('"width": 8', '"width": 100000')
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputDataError, match="width"):
        load_checkpoint(tmp_path / "bad.pt")
