"""Distributed training on Ray Train: configuration, the per-worker loop, checkpoints, the driver
pipeline (MLflow run, fit, bundle, evaluation, registry)."""
from .config import TrainConfig
from .pipeline import TrainSummary, run_training
from .trainer import FitResult, TrainingError, fit

__all__ = ["FitResult", "TrainConfig", "TrainSummary", "TrainingError", "fit", "run_training"]
