"""Device choice, batched / sliding-window prediction and uncertainty maps."""

from .device import autocast, choose_device, describe
from .predict import (
           CasePrediction,
           InferenceConfig,
           PoolResult,
           Predictor,
           predict_pool_job,
           write_case_outputs,
)

__all__ = ["CasePrediction", "InferenceConfig", "PoolResult", "Predictor", "autocast", "choose_device",
           "describe", "predict_pool_job", "write_case_outputs"]
