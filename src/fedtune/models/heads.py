"""Prediction heads and the two task models built on a shared trunk.

State-dict names are stable and documented: the trunk lives under `trunk.`, every head under
`heads.<task>.` (fitness: one per FLAb task; sentiment: `heads.sentiment.`), so a filter can keep
heads private to a site by name.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.flab import Assay, ordered_tasks
from ..data.fpb import SENTIMENT_LABELS
from .trunk import Trunk

FITNESS_HIDDEN = (128, 64, 32)
SENTIMENT_HIDDEN = (256,)


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden=FITNESS_HIDDEN, dropout: float = 0.1):
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


class FitnessModel(nn.Module):
    """Trunk + one regression head per task, one output per assay of the task (oriented z-scores).

    Heavy and light chains are encoded separately, pooled, and concatenated ([B, 2H])."""

    kind = "fitness"

    def __init__(self, trunk: Trunk, assays: list[Assay], hidden=FITNESS_HIDDEN, dropout: float = 0.1):
        super().__init__()
        self.trunk = trunk
        self.assays = list(assays)
        self.tasks = ordered_tasks(self.assays)
        self.head_hidden, self.dropout = tuple(hidden), dropout
        self.heads = self.new_heads()

    def new_heads(self) -> nn.ModuleDict:
        """A fresh head set of this model's shapes (e.g. to hold another site's heads)."""
        dim = 2 * self.trunk.hidden_size
        heads = nn.ModuleDict({t: MLPHead(dim, sum(a.task == t for a in self.assays), self.head_hidden,
                                          self.dropout) for t in self.tasks})
        return heads.to(next(self.trunk.parameters()).device)

    def tokenize(self, heavy: list[str], light: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        return {"heavy": self.trunk.tokenize([self.trunk.prepare(s) for s in heavy]),
                "light": self.trunk.tokenize([self.trunk.prepare(s) for s in light])}

    def embed_tokens(self, tokens: dict) -> torch.Tensor:
        dev = next(self.parameters()).device
        parts = [self.trunk(**{k: v.to(dev, non_blocking=True) for k, v in tokens[c].items()})
                 for c in ("heavy", "light")]
        return torch.cat(parts, dim=-1)

    def embed(self, heavy: list[str], light: list[str]) -> torch.Tensor:
        return self.embed_tokens(self.tokenize(heavy, light))

    def apply_heads(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None, tasks=None) -> dict:
        heads = self.heads if heads is None else heads
        return {t: heads[t](emb) for t in (tasks or self.tasks)}

    def assay_outputs(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None) -> torch.Tensor:
        """[B, A] in assay order (assays are grouped by task in the same order as the heads)."""
        out = self.apply_heads(emb, heads)
        return torch.cat([out[t] for t in self.tasks], dim=-1)

    def forward(self, heavy: list[str], light: list[str]) -> dict:
        return self.apply_heads(self.embed(heavy, light))


class SentimentModel(nn.Module):
    """Trunk + a 3-class head (negative, neutral, positive) under `heads.sentiment.`."""

    kind = "sentiment"
    labels = SENTIMENT_LABELS

    def __init__(self, trunk: Trunk, hidden=SENTIMENT_HIDDEN, dropout: float = 0.1):
        super().__init__()
        self.trunk = trunk
        self.head_hidden, self.dropout = tuple(hidden), dropout
        self.heads = self.new_heads()

    def new_heads(self) -> nn.ModuleDict:
        head = MLPHead(self.trunk.hidden_size, len(SENTIMENT_LABELS), self.head_hidden, self.dropout)
        return nn.ModuleDict({"sentiment": head}).to(next(self.trunk.parameters()).device)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.trunk.tokenize(texts)

    def embed_tokens(self, tokens: dict) -> torch.Tensor:
        dev = next(self.parameters()).device
        return self.trunk(**{k: v.to(dev, non_blocking=True) for k, v in tokens.items()})

    def embed(self, texts: list[str]) -> torch.Tensor:
        return self.embed_tokens(self.tokenize(texts))

    def apply_heads(self, emb: torch.Tensor, heads: nn.ModuleDict | None = None) -> torch.Tensor:
        return (self.heads if heads is None else heads)["sentiment"](emb)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.apply_heads(self.embed(texts))
