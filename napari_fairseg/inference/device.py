"""Device choice (CUDA, then Apple MPS, then CPU) and mixed precision."""

from __future__ import annotations

import contextlib

import torch

from ..options import DEVICES


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def choose_device(preference: str = "auto") -> torch.device:
    """The device to compute on.

    Parameters
    ----------
    preference : str
        ``auto`` (CUDA if available, else MPS, else CPU), or ``cuda`` / ``cuda:N`` / ``mps`` /
        ``cpu`` to force one; forcing an unavailable device is an error, not a silent fallback.
    """
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = pref.split(":", 1)[0]
    if base not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {preference!r}")
    if base == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available on this machine "
                           "(torch was built without CUDA or no GPU is visible); use --device cpu or auto")
    if base == "mps" and not _mps_available():
        raise RuntimeError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
    return torch.device(pref)


def describe(device: torch.device) -> str:
    """A human-readable device name (``"cuda:0 (NVIDIA H100)"``, ``"cpu (2 threads)"``)."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'' if n == 1 else 's'})"
    return str(device)


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision (float16) on CUDA when ``enabled``; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
