"""Prediction heads: an MLP on pooled trunk embeddings.

Each task kind's model (`fedtune.tasks.<kind>`) keeps its trunk under `trunk.` and its heads in a ModuleDict
under `heads.<name>.`; these state-dict names are stable and documented, so a filter can keep heads private
to a site by name (`modes.is_head_key`).
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN = (128, 64, 32)


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden=HIDDEN, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        prev = in_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.GELU(), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---- head types: an MLP (above), a linear head (a ridge solution, `fedtune.train.ridge`), or a linear head plus an
# MLP whose last layer starts at zero, so that before any training it is exactly that linear map
HEAD_TYPES = ("mlp", "ridge", "ridge-mlp")


class LinearHead(nn.Module):
    """One linear map of the pooled embeddings (state keys `linear.weight`, `linear.bias`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class RidgeMLPHead(nn.Module):
    """linear(x) + mlp(x): the linear term holds a ridge solution, the MLP (same hidden sizes as `MLPHead`) learns
    what is left. The MLP's output layer starts at zero, so the head starts as the linear map exactly; training
    then moves both parts."""

    def __init__(self, in_dim: int, out_dim: int, hidden=HIDDEN, dropout: float = 0.1):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = MLPHead(in_dim, out_dim, hidden, dropout)
        last = self.mlp.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


def make_head(head_type: str, in_dim: int, out_dim: int, hidden=HIDDEN, dropout: float = 0.1) -> nn.Module:
    """A head of `head_type` (one of HEAD_TYPES)."""
    if head_type == "mlp":
        return MLPHead(in_dim, out_dim, hidden, dropout)
    if head_type == "ridge":
        return LinearHead(in_dim, out_dim)
    if head_type == "ridge-mlp":
        return RidgeMLPHead(in_dim, out_dim, hidden, dropout)
    raise ValueError(f"unknown head type {head_type!r}; choose one of {HEAD_TYPES}")


def set_linear(head: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Put a linear map (weight [out, in], bias [out]) into a head with a linear term (LinearHead, RidgeMLPHead)."""
    if not hasattr(head, "linear"):
        raise ValueError(f"a {type(head).__name__} has no linear term to set")
    with torch.no_grad():
        head.linear.weight.copy_(weight.to(head.linear.weight))
        head.linear.bias.copy_(bias.to(head.linear.bias))
