"""Active learning: acquisition strategies, the labelling project, the round loop and the
simulated experiment of seed 001.

The names below are loaded on first use, so that ``napari_fairseg.active.project`` (the labelling
database, which every annotation save and ``fairseg project`` command opens) does not pay for
importing torch, which only the encoder, the strategies and the round loop need.
"""

import importlib

_HOME = {"embeddings_job": "embeddings", "load_encoder": "embeddings", "RoundConfig": "loop", "RoundResult": "loop",
         "round_job": "loop", "Project": "project", "STRATEGIES": "strategies", "Context": "strategies",
         "Strategy": "strategies", "make_strategy": "strategies", "quotas": "strategies",
         "wle_group_weights": "strategies"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
