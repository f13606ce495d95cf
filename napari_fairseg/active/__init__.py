"""Active learning: acquisition strategies (the project store and round loop come next)."""

from .strategies import STRATEGIES, Context, Strategy, make_strategy, quotas, wle_group_weights

__all__ = ["STRATEGIES", "Context", "Strategy", "make_strategy", "quotas", "wle_group_weights"]
