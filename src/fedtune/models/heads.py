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
