"""Active learning: acquisition strategies and the labelling project (the round loop comes next)."""

from .project import Project
from .strategies import STRATEGIES, Context, Strategy, make_strategy, quotas, wle_group_weights

__all__ = ["STRATEGIES", "Context", "Project", "Strategy", "make_strategy", "quotas", "wle_group_weights"]
