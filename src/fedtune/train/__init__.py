"""Training: the loop (shared by local runs and federated clients), settings and metrics."""

from .config import TrainConfig, resolve_device
from .loop import Trainer
from .metrics import fitness_metrics, key_metric, sentiment_metrics

__all__ = ["TrainConfig", "Trainer", "fitness_metrics", "key_metric", "resolve_device", "sentiment_metrics"]
