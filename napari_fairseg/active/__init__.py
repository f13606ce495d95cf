"""Active learning: acquisition strategies, the labelling project, the round loop and the
simulated experiment of seed 001."""

from .embeddings import embeddings_job, load_encoder
from .loop import RoundConfig, RoundResult, round_job
from .project import Project
from .strategies import STRATEGIES, Context, Strategy, make_strategy, quotas, wle_group_weights

__all__ = ["STRATEGIES", "Context", "Project", "RoundConfig", "RoundResult", "Strategy", "embeddings_job",
           "load_encoder", "make_strategy", "quotas", "round_job", "wle_group_weights"]
