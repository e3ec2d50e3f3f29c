"""Training losses, each as (sum of per-element losses, element count) so the single-process Trainer
(sum / count) and the DDP trainer (the whole batch's count, each rank's sum) share one definition.
A task kind picks one (`fedtune.tasks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Loss:
    name: str
    terms: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    count: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total, count = self.terms(out, target)
        return total / count.clamp_min(1)


def _mse_terms(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = ~torch.isnan(target)     # multi-target: only the targets a sample has labels for
    diff = torch.where(mask, out.float() - torch.nan_to_num(target), torch.zeros_like(target))
    return (diff ** 2).sum(), _mse_count(target)


def _mse_count(target: torch.Tensor) -> torch.Tensor:
    return (~torch.isnan(target)).sum().float()


def _ce_terms(out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return nn.functional.cross_entropy(out.float(), target, reduction="sum"), _ce_count(target)


def _ce_count(target: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(len(target)), device=target.device)


MASKED_MSE = Loss("masked_mse", _mse_terms, _mse_count)       # float targets, NaN = no label
CROSS_ENTROPY = Loss("cross_entropy", _ce_terms, _ce_count)   # int64 class indices
