"""Safe checkpoints: weights plus the metadata needed to use them correctly.

A checkpoint is a ``torch.save`` of plain containers only — strings (JSON), numbers and tensors —
and is always read back with ``torch.load(..., weights_only=True)``, which refuses to unpickle
arbitrary objects. Writes are atomic (temporary file + rename).

Layout::

    {"format": "napari-fairseg-checkpoint", "format_version": 1,
     "config": "<ModelConfig JSON>", "meta": "<JSON: classes, cohort, attributes, version, ...>",
     "state_dict": {name: tensor}, "train_state": {...} or absent}
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.atomic import write_bytes_atomic
from ..data.kinds import kind_of
from ..data.manifest import Cohort
from ..errors import InputDataError, json_object
from .networks import ModelConfig, build_network

FORMAT = "napari-fairseg-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes
    ----------
    config : ModelConfig
    meta : dict
        ``classes`` (class name → label values), ``cohort``, ``attributes``, ``group_attribute``,
        ``package_version``, ``created``, ``epoch`` and whatever the trainer recorded.
    state_dict : dict of str to torch.Tensor
    train_state : dict or None
        Optimizer and objective state for resuming training.
    path : Path or None
    """

    config: ModelConfig
    meta: dict = field(default_factory=dict)
    state_dict: dict | None = None
    train_state: dict | None = None
    path: Path | None = None

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The network with these weights, on ``device``, in eval mode."""
        model = build_network(self.config)
        if self.state_dict is not None:
            adapted = "uuds" in self.config.extra
            try:
                model.load_state_dict(self.state_dict)
            except RuntimeError as exc:
                if adapted and "target_map" not in self.state_dict:
                    raise InputDataError(self.path, "this model was adapted (fairseg adapt) by an earlier version of "
                                         "napari-fairseg, whose translator this version does not have: adapt its "
                                         "source model again") from exc
                problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
                raise InputDataError(self.path, f"weights do not fit the {self.config.network} network"
                                     f"{' (adapted)' if adapted else ''} described in the checkpoint: "
                                     f"{(problems or [str(exc)])[0][:300]}") from exc
            bad = [k for k, v in self.state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                raise InputDataError(self.path, f"the checkpoint's weights hold NaN or infinite values ({bad[:3]}): "
                                     "the file is damaged or came from a run that diverged")
        return model.to(device).eval()

    @property
    def classes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v) for k, v in self.meta.get("classes", {}).items()}


def _version() -> str:
    from .. import __version__

    return __version__


def save_checkpoint(path: str | Path, model: nn.Module, config: ModelConfig, meta: dict | None = None, *,
                    train_state: dict | None = None) -> Path:
    """Write ``model``'s weights, ``config`` and ``meta`` to ``path`` atomically."""
    return _write(path, model.state_dict(), config, meta, train_state)


def _write(path, state_dict: dict, config: ModelConfig, meta: dict | None, train_state: dict | None) -> Path:
    meta = dict(meta or {})
    meta.setdefault("package_version", _version())
    meta.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "config": json.dumps(config.to_dict()), "meta": json.dumps(meta, default=_json_default),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    if train_state is not None:
        payload["train_state"] = train_state
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(path, buf.getvalue())


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set, np.ndarray)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def weights_only_load(path: Path, what: str):
    """``torch.load`` of tensors and plain containers only; anything else is one clear line.

    A file holding other Python objects (code, perhaps) is refused without running them; a file
    that is not PyTorch's is "not readable". PyTorch's own message is not passed on: it advises
    loading again with ``weights_only=False``, which is what must not be done with such a file.
    """
    if not path.is_file():
        raise InputDataError(path, f"{what} file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():
            raise InputDataError(path, "refused to load: the file holds Python objects other than weights "
                                 "and metadata (weights-only loading)") from None
        raise InputDataError(path, f"not a readable {what} (not a PyTorch file)") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/zip errors for corrupt files
        first = str(exc).splitlines()[0][:200] if str(exc) else "truncated"
        raise InputDataError(path, f"not a readable {what} ({type(exc).__name__}: {first})") from None


def save_generator(out: str | Path, fmt: str, meta: dict, model: nn.Module) -> Path:
    """Write a generator (``fmt`` marker, JSON ``meta``, CPU weights) atomically to ``out``."""
    buf = io.BytesIO()
    torch.save({"format": fmt, "meta": json.dumps(meta),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buf)
    return write_bytes_atomic(out, buf.getvalue())


def load_generator(path: str | Path, fmt: str, what: str, build) -> tuple[nn.Module, dict]:
    """A file of :func:`save_generator` → ``(model in eval mode, meta)``, weights only.

    ``build(meta)`` checks the decoded meta (raising on anything invalid: the file may be
    hostile, so it is checked before it sizes anything) and returns the empty model.

    Raises
    ------
    InputDataError
        One line naming the file: unreadable, foreign, holding code, or with invalid metadata or weights.
    """
    path = Path(path)
    payload = weights_only_load(path, what)
    try:
        if not isinstance(payload, dict) or payload.get("format") != fmt:
            raise ValueError(f"no {what} format marker")
        meta = json.loads(payload["meta"])
        model = build(meta)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # invalid metadata or weights: the reason on one line
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InputDataError(path, f"not a usable {what}: {text}") from None
    return model.eval(), meta


def load_checkpoint(path: str | Path, *, with_train_state: bool = False) -> Checkpoint:
    """Read a checkpoint without unpickling arbitrary objects.

    Raises
    ------
    InputDataError
        Missing, corrupt or foreign file, or one that holds anything but weights and metadata.
    """
    path = Path(path)
    payload = weights_only_load(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputDataError(path, "not a napari-fairseg checkpoint (no 'format' marker); "
                             "train one with `fairseg train`")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputDataError(path, f"checkpoint 'format_version' must be a whole number, found {type(version).__name__}")
    if version > FORMAT_VERSION:
        raise InputDataError(path, f"checkpoint format {version} is newer than this "
                             f"napari-fairseg ({FORMAT_VERSION}); upgrade the package")
    config_dict = _json_object(payload, "config", path, required=True)
    try:
        config = ModelConfig.from_dict(config_dict)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputDataError(path, f"checkpoint 'config' is invalid: {exc}") from exc
    meta = _json_object(payload, "meta", path)
    state_dict = payload.get("state_dict")
    if state_dict is not None and not (isinstance(state_dict, dict) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items())):
        raise InputDataError(path, "checkpoint 'state_dict' must map parameter names to tensors, found "
                             f"{type(state_dict).__name__}")
    train_state = payload.get("train_state") if with_train_state else None
    if train_state is not None and not isinstance(train_state, dict):
        raise InputDataError(path, f"checkpoint 'train_state' must be a dict, found {type(train_state).__name__}")
    return Checkpoint(config, meta, state_dict, train_state, path)


def _json_object(payload: dict, key: str, path: Path, *, required: bool = False) -> dict:
    """``payload[key]``, a JSON text of an object, decoded; a clear error naming the file otherwise."""
    text = payload.get(key)
    if text is None or (text == "" and not required):
        if required:
            raise InputDataError(path, f"checkpoint has no {key!r} entry")
        return {}
    return json_object(text, f"checkpoint {key!r}", path)


def cohort_label_values(cohort: Cohort) -> tuple[int, ...]:
    """Background 0 followed by every label value the cohort's classes use, sorted."""
    return (0, *sorted({v for vals in cohort.classes.values() for v in vals} - {0}))


def check_compatible(ckpt: Checkpoint, cohort: Cohort, *, image_shape: tuple[int, ...] | None = None) -> None:
    """Raise :class:`InputDataError` when ``ckpt`` cannot segment ``cohort`` correctly.

    Parameters
    ----------
    image_shape : tuple of int, optional
        ``(C, *spatial)`` of one decoded case, to check channels and spatial dimensions.
    """
    cfg = ckpt.config
    where = ckpt.path
    values = cohort_label_values(cohort)
    if tuple(cfg.label_values) != values:
        raise InputDataError(where, f"the checkpoint predicts label values {cfg.label_values} "
                             f"({_names(ckpt.classes)}) but cohort {cohort.name!r} uses {values} "
                             f"({_names(cohort.classes)}): it was trained for another task")
    if kind_of(cohort).spatial_dims == 2 and cfg.spatial_dims != 2:  # known before any case is read
        raise InputDataError(where, f"the checkpoint is a {cfg.spatial_dims}D model but cohort {cohort.name!r} "
                             f"holds 2D images ({cohort.kind})")
    if image_shape is not None:
        c, spatial = image_shape[0], image_shape[1:]
        if len(spatial) != cfg.spatial_dims:
            raise InputDataError(where, f"the checkpoint is a {cfg.spatial_dims}D model but cohort "
                                 f"{cohort.name!r} has {len(spatial)}D images (shape {tuple(spatial)})")
        if c != cfg.in_channels:
            hint = (" (the 4th axis of a 4D NIfTI file — time points, phases — is read as channels)"
                    if len(spatial) == 3 and kind_of(cohort).spatial_dims == 3 else "")
            raise InputDataError(cohort.source or where, f"cohort {cohort.name!r} has {c} image channel(s){hint} but "
                                 f"the checkpoint {Path(where).name if where else ''} expects {cfg.in_channels}")


def _names(classes: dict) -> str:
    return ", ".join(f"{k}={list(v)}" for k, v in classes.items()) or "no classes recorded"


def export_checkpoint(src: str | Path, dst: str | Path, *, meta: dict | None = None) -> Path:
    """Copy a checkpoint without its training state (for sharing: weights and metadata only).

    The embedded training log is dropped and ``meta`` entries are added or replaced; the weights
    are written back exactly as read (bit-identical tensors).
    """
    ckpt = load_checkpoint(src)
    if ckpt.state_dict is None:
        raise InputDataError(ckpt.path, "checkpoint holds no weights to export")
    ckpt.build("cpu")  # refuses weights that do not fit the network
    kept = {k: v for k, v in ckpt.meta.items() if k != "log"}
    return _write(dst, ckpt.state_dict, ckpt.config, {**kept, **(meta or {})}, None)


def weights_digest(ckpt: Checkpoint) -> str:
    """SHA-256 of a checkpoint's weights (names, dtypes, shapes and bytes, in name order)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(ckpt.state_dict or {}):
        t = ckpt.state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()
