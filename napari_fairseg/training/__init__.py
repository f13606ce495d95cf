"""Trainer (a generator of progress events), losses and fairness objectives."""

from .losses import LOSSES, per_case_loss, pseudo_label_loss
from .objectives import OBJECTIVES, divergence_weights, make_objective
from .trainer import (
    TrainConfig,
    TrainResult,
    default_group_attribute,
    discrete_attributes,
    model_config_for,
    train_job,
    validate,
)

__all__ = ["LOSSES", "OBJECTIVES", "TrainConfig", "default_group_attribute", "discrete_attributes",
           "validate", "TrainResult", "divergence_weights", "make_objective",
           "model_config_for", "per_case_loss", "pseudo_label_loss", "train_job"]
