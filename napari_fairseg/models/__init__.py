"""Network registry (MONAI networks behind one config) and safe checkpoints."""

from .checkpoint import (
           Checkpoint,
           check_compatible,
           cohort_label_values,
           load_checkpoint,
           save_checkpoint,
)
from .networks import NETWORKS, ModelConfig, build_network, pad_to_divisible, size_divisor

__all__ = ["NETWORKS", "Checkpoint", "ModelConfig", "build_network", "check_compatible", "cohort_label_values",
           "load_checkpoint", "pad_to_divisible", "save_checkpoint", "size_divisor"]
