"""Differentially private training (DP-SGD, Abadi et al. 2016, on Opacus) of the heads on a frozen trunk, or
of LoRA adapters and heads together.

Each step samples every training row independently with probability q = batch_size / n (Poisson sampling,
the sampling the accountant's analysis assumes), computes one gradient per row over every trainable parameter
(Opacus' GradSampleModule hooks on the model's trainable layers: the heads alone on a frozen trunk, whose
embeddings are cached, or peft's LoRA A/B matrices and the heads, whose gradient for a row is one vector
under one norm; the frozen base weights get none), clips each to L2 norm `max_grad_norm` (C), sums them, adds Gaussian noise N(0, (sigma C)^2) per coordinate and divides by
the expected batch size B: the optimizer (AdamW, as in every fedtune run) receives
(sum_i clip(g_i) + N(0, sigma^2 C^2)) / B. Opacus' RDP accountant (or PRV) turns (sigma, q, steps) into an
(epsilon, delta) guarantee for the site's training rows (add/remove one row).

`DPConfig` is what a job asks for: a target epsilon over the whole job (the noise multiplier is then solved
for the planned number of steps) or a noise multiplier (epsilon follows), plus delta and C. `plan` fixes the
sampling rate, the steps and sigma before training; the trainer counts the steps it really takes (early stopping
takes fewer) and `DPTrainer.epsilon()` is what the accountant says for them.

Each row's loss is the kind's own loss over that row alone (its mean over the row's labelled targets), so a
row's gradient depends on that row only: the sensitivity of the sum is exactly C.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .loop import Trainer

ACCOUNTANTS = ("rdp", "prv")
TRUNK_MODES = ("frozen", "lora")    # what DP-SGD trains: heads alone, or LoRA adapters + heads


def check_trunk_mode(mode: str) -> None:
    """Refuse a trunk mode DP-SGD does not cover, with the reason."""
    if mode not in TRUNK_MODES:
        raise ValueError(f"differential privacy needs trunk mode 'frozen' (heads) or 'lora' (adapters + heads), "
                         f"not {mode!r}: per-row gradients of a whole trunk ('full') or of a p-tuning prompt "
                         f"encoder ('ptuning') are not offered")


@dataclass
class DPConfig:
    epsilon: float = 0.0            # target epsilon over the whole job (0: use noise_multiplier as given)
    delta: float = 1e-5
    max_grad_norm: float = 1.0      # C: each row's gradient is clipped to this L2 norm
    noise_multiplier: float = 0.0   # sigma: noise std = sigma * C (solved from epsilon when epsilon > 0)
    accountant: str = "rdp"         # rdp | prv (Opacus' accountants)

    def __post_init__(self):
        for name in ("epsilon", "delta", "max_grad_norm", "noise_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"dp {name} must be a finite non-negative number: {v!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"dp accountant {self.accountant!r}: choose one of {ACCOUNTANTS}")
        if self.enabled:
            if not 0 < self.delta < 1:
                raise ValueError(f"dp delta must be in (0, 1): {self.delta}")
            if self.max_grad_norm <= 0:
                raise ValueError(f"dp max_grad_norm must be positive: {self.max_grad_norm}")
            if self.epsilon and self.noise_multiplier:
                raise ValueError("give a target epsilon or a noise multiplier, not both")

    @property
    def enabled(self) -> bool:
        return bool(self.epsilon or self.noise_multiplier)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "DPConfig":
        if not isinstance(d, dict):
            raise ValueError(f"dp settings must be an object: {d!r}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown dp settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass(frozen=True)
class DPPlan:
    """What a site will do: sampling rate, steps per epoch, the most steps the job can take, sigma, and the
    epsilon those steps would spend (the job's planned epsilon)."""
    sample_rate: float
    steps_per_epoch: int
    max_steps: int
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    epsilon: float
    accountant: str

    def to_dict(self) -> dict:
        return asdict(self)


def accounted_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> float:
    """Opacus' epsilon for `steps` DP-SGD steps at this noise and sampling rate (0 steps: 0; no noise: inf)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants import create_accountant
    acc = create_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "optimal order is the largest alpha": a looser bound, still valid
        return float(acc.get_epsilon(delta=delta))


def plan(cfg: DPConfig, n_rows: int, batch_size: int, epochs: int) -> DPPlan:
    """The site's DP plan for `epochs` epochs over `n_rows` training rows with expected batch `batch_size`."""
    if not cfg.enabled:
        raise ValueError("differential privacy is off in this config")
    if n_rows < 1:
        raise ValueError("no training rows")
    q = min(1.0, batch_size / n_rows)
    per_epoch = max(1, round(1 / q))
    steps = per_epoch * max(1, epochs)
    sigma = cfg.noise_multiplier
    if cfg.epsilon:
        from opacus.accountants.utils import get_noise_multiplier
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = float(get_noise_multiplier(target_epsilon=cfg.epsilon, target_delta=cfg.delta, sample_rate=q,
                                               steps=steps, accountant=cfg.accountant))
    return DPPlan(sample_rate=q, steps_per_epoch=per_epoch, max_steps=steps, noise_multiplier=sigma,
                  max_grad_norm=cfg.max_grad_norm, delta=cfg.delta,
                  epsilon=accounted_epsilon(sigma, q, steps, cfg.delta, cfg.accountant), accountant=cfg.accountant)


def per_row_loss(loss, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B]: the kind's loss (`train.losses.Loss`) over each row alone (a row without labels: 0)."""
    def one(o, t):
        total, count = loss.terms(o.unsqueeze(0), t.unsqueeze(0))
        return total / count.clamp_min(1)
    return torch.vmap(one)(out, target)


class DPTrainer(Trainer):
    """The Trainer with DP-SGD steps (see the module docstring); evaluation and early stopping unchanged.
    Trunk mode frozen (the per-row gradients are the heads') or lora (the adapters' and the heads')."""

    def __init__(self, model, cfg, stats=None, *, dp: DPPlan, writer=None, total_epochs=None, tag: str = ""):
        trainable_trunk = any(p.requires_grad for p in model.trunk.parameters())
        check_trunk_mode(getattr(model, "trunk_mode", "full") if trainable_trunk else "frozen")
        super().__init__(model, cfg, stats, writer=writer, total_epochs=total_epochs, tag=tag)
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer
        self.dp = dp
        self._gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")   # hooks on trainable layers
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.optimizer = DPOptimizer(self.optimizer, noise_multiplier=dp.noise_multiplier,
                                     max_grad_norm=dp.max_grad_norm, expected_batch_size=cfg.batch_size,
                                     loss_reduction="mean")
        self.accountant = create_accountant(dp.accountant)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=dp.sample_rate))
        self.dp_steps = 0

    def epsilon(self) -> float:
        """The epsilon spent so far (every DP step this trainer took, over all rounds)."""
        if not self.dp_steps:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.accountant.get_epsilon(delta=self.dp.delta))

    def spent(self) -> dict:
        """What the site reports: the guarantee so far and how it was obtained."""
        return {"epsilon": self.epsilon(), "delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier,
                "max_grad_norm": self.dp.max_grad_norm, "sample_rate": self.dp.sample_rate,
                "steps": self.dp_steps, "accountant": self.dp.accountant}

    def train_epoch(self, data) -> float:
        if self.scheduler is None:
            self._schedule(self.dp.steps_per_epoch)
        n = len(data)
        losses = []
        for _ in range(self.dp.steps_per_epoch):
            idx = np.flatnonzero(self.rng.random(n) < self.dp.sample_rate)   # Poisson sampling
            losses.append(self.train_step(data, idx))
        self.epoch += 1
        finite = [v for v in losses if not math.isnan(v)]
        return float(np.mean(finite)) if finite else float("nan")

    def train_step(self, data, idx: np.ndarray) -> float:
        self.model.train()
        if self.frozen:
            self.model.trunk.eval()
        self.optimizer.zero_grad(set_to_none=True)
        value = float("nan")
        if len(idx):
            with self.autocast():
                out = self._outputs(data, idx)
            rows = per_row_loss(self.task.loss, out.float(), self._targets(data, idx))
            with warnings.catch_warnings():   # the first hooked layer's input needs no gradient: expected
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                rows.sum().backward()
            value = float(rows.mean().item())
        else:   # an empty Poisson batch still takes a (pure noise) step: the accountant counts it
            for p in self._params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.dp_steps += 1
        return self.log_loss(value) if len(idx) else value
