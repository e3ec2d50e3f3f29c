"""Training settings, one typed object passed down (CLI flags and FL job config fill it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-5              # trunk parameters in `full` mode
    adapter_lr: float = 5e-4      # adapter parameters: LoRA matrices, p-tuning prompt encoder
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    patience: int = 8             # epochs without validation improvement before stopping
    seed: int = 0
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    bf16: bool = True             # bf16 autocast on CUDA (ignored on CPU)
    eval_batch_size: int = 128
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_config_for(base: dict, mode: str, **overrides) -> TrainConfig:
    """A task kind's training defaults (`base`: TrainConfig fields) adjusted for the trunk mode (a frozen trunk
    only trains small heads: more epochs, more patience), then `overrides` that are not None."""
    base = dict(base)
    if mode == "frozen":
        base.update(epochs=max(base.get("epochs", TrainConfig.epochs), 60), patience=10)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)

