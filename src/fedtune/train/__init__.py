"""Training: the loop (shared by local runs and federated clients), settings and metrics."""

from .config import TrainConfig, resolve_device
from .loop import Trainer
from .metrics import classification_metrics, regression_metrics

__all__ = ["TrainConfig", "Trainer", "classification_metrics", "regression_metrics", "resolve_device"]
