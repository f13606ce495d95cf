"""Device choice, batched / sliding-window prediction and uncertainty maps."""

from .device import autocast, choose_device, describe
from .domain import input_warnings
from .predict import (
           CasePrediction,
           InferenceConfig,
           PoolResult,
           Predictor,
           predict_cases_job,
           predict_pool_job,
           write_case_outputs,
)

__all__ = ["CasePrediction", "InferenceConfig", "PoolResult", "Predictor", "autocast", "choose_device",
           "describe", "input_warnings", "predict_cases_job", "predict_pool_job", "write_case_outputs"]
