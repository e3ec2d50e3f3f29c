"""DP-SGD on the heads (fedtune.train.dp): the noise the optimizer receives has the scale the mechanism
promises, the epsilon the trainer reports is the accountant's figure for the steps it took, and a job's plan
meets its target epsilon."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtune.data import AssayStats, synthetic_fitness, synthetic_sentiment, train_val_split
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.train import TrainConfig, Trainer
from fedtune.train.dp import DPConfig, DPTrainer, accounted_epsilon, plan


def _fitness(trunk, n=200, seed=3):
    data = synthetic_fitness(n, seed=seed)
    train, val = train_val_split(data, 0.2, seed=0)
    model = build_model("fitness", TrunkConfig(str(trunk), mode="frozen"), data.assays)
    return model, train, val, AssayStats.fit(train)


def _grads_after_one_step(trunk, sigma: float, clip: float, batch: int) -> dict:
    """The gradient AdamW receives after one DP step (same model, data and Poisson batch; noise `sigma`)."""
    from dataclasses import replace

    from fedtune.train.ddp import set_dropout
    torch.manual_seed(0)
    model, train, _, stats = _fitness(trunk)
    set_dropout(model, 0.0)             # the two runs must differ by the noise alone
    dp = replace(plan(DPConfig(noise_multiplier=1.0, max_grad_norm=clip), len(train), batch, 1),
                 noise_multiplier=sigma)
    trainer = DPTrainer(model, TrainConfig(batch_size=batch, progress=False), stats, dp=dp)
    trainer._schedule(dp.steps_per_epoch)
    idx = np.flatnonzero(trainer.rng.random(len(train)) < dp.sample_rate)
    trainer.train_step(train, idx)
    return {n: p.grad.detach().clone() for n, p in model.heads.named_parameters()}


def test_dp_noise_on_the_gradient_has_std_sigma_clip_over_batch(tiny_antibody_trunk):
    """The averaged gradient of a DP step minus that of the same step without noise is Gaussian noise of
    std sigma * C / B per coordinate (B the expected batch size), whatever the data."""
    sigma, clip, batch = 2.0, 0.5, 16
    noisy = _grads_after_one_step(tiny_antibody_trunk, sigma, clip, batch)
    clean = _grads_after_one_step(tiny_antibody_trunk, 0.0, clip, batch)
    diff = torch.cat([(noisy[k] - clean[k]).flatten() for k in noisy])
    expected = sigma * clip / batch
    assert diff.numel() > 2000
    assert diff.std().item() == pytest.approx(expected, rel=0.08)
    assert abs(diff.mean().item()) < 4 * expected / diff.numel() ** 0.5
    # without noise: the sum of clipped per-row gradients over B, so its norm is at most C * rows / B
    total = torch.cat([g.flatten() for g in clean.values()]).norm().item()
    assert 0 < total <= clip * 200 / batch


def test_reported_epsilon_is_the_accountants_figure_for_the_steps_taken(tiny_antibody_trunk):
    model, train, val, stats = _fitness(tiny_antibody_trunk)
    dp = plan(DPConfig(noise_multiplier=1.1, max_grad_norm=1.0), len(train), 32, 3)
    trainer = DPTrainer(model, TrainConfig(batch_size=32, epochs=3, patience=10, progress=False), stats, dp=dp)
    for _ in range(2):                 # two "rounds" of one epoch each: the accountant keeps counting
        trainer.fit(train, val, epochs=1)
    assert trainer.dp_steps == 2 * dp.steps_per_epoch
    expected = accounted_epsilon(1.1, dp.sample_rate, trainer.dp_steps, dp.delta)
    from opacus.accountants import RDPAccountant
    acc = RDPAccountant()
    acc.history = [(1.1, 32 / len(train), 2 * round(len(train) / 32))]
    assert trainer.epsilon() == pytest.approx(expected, rel=1e-9)
    assert trainer.epsilon() == pytest.approx(acc.get_epsilon(dp.delta), rel=1e-9)
    assert trainer.spent()["steps"] == trainer.dp_steps and 0 < trainer.epsilon() < dp.epsilon * 1.0001


def test_plan_meets_the_target_epsilon_and_more_noise_costs_less(tiny_antibody_trunk):
    p4 = plan(DPConfig(epsilon=4.0), n_rows=400, batch_size=32, epochs=6)
    p1 = plan(DPConfig(epsilon=1.0), n_rows=400, batch_size=32, epochs=6)
    assert p4.epsilon <= 4.0 and p4.epsilon == pytest.approx(4.0, rel=0.02)
    assert p1.noise_multiplier > p4.noise_multiplier > 0
    assert p4.max_steps == 6 * round(400 / 32)


@pytest.mark.parametrize("bad", [dict(epsilon=-1), dict(delta=1.5, epsilon=1), dict(max_grad_norm=0, epsilon=1),
                                 dict(epsilon=1, noise_multiplier=1), dict(accountant="moments"),
                                 dict(epsilon=float("nan"))])
def test_bad_dp_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DPConfig(**bad)


def test_dp_training_learns_at_a_generous_epsilon_and_classification_works(tiny_antibody_trunk, tiny_text_trunk):
    model, train, val, stats = _fitness(tiny_antibody_trunk, n=300)
    dp = plan(DPConfig(epsilon=50.0, max_grad_norm=1.0), len(train), 32, 20)
    trainer = DPTrainer(model, TrainConfig(batch_size=32, epochs=20, head_lr=5e-3, progress=False), stats, dp=dp)
    before = trainer.evaluate(val)["loss"]
    trainer.fit(train, val)
    assert trainer.evaluate(val)["loss"] < before
    assert 0 < trainer.epsilon() <= 50.0 * 1.0001
    data = synthetic_sentiment(120, seed=0)
    tr, va = train_val_split(data, 0.2, seed=0)
    model = build_model("sentiment", TrunkConfig(str(tiny_text_trunk), mode="frozen"), [])
    trainer = DPTrainer(model, TrainConfig(batch_size=16, epochs=2, progress=False), None,
                        dp=plan(DPConfig(epsilon=8.0), len(tr), 16, 2))
    trainer.fit(tr, va)
    assert np.isfinite(trainer.evaluate(va)["loss"]) and trainer.dp_steps == 2 * round(len(tr) / 16)


def test_an_empty_poisson_batch_still_takes_a_pure_noise_step(tiny_antibody_trunk):
    """Poisson sampling can draw no row: the step still happens (the accountant counts it) and the gradient is
    noise alone, std sigma * C / B."""
    model, train, _, stats = _fitness(tiny_antibody_trunk)
    dp = plan(DPConfig(noise_multiplier=3.0, max_grad_norm=0.5), len(train), 16, 1)
    trainer = DPTrainer(model, TrainConfig(batch_size=16, progress=False), stats, dp=dp)
    trainer._schedule(dp.steps_per_epoch)
    trainer.train_step(train, np.array([], dtype=np.int64))
    grads = torch.cat([p.grad.flatten() for p in model.heads.parameters()])
    assert trainer.dp_steps == 1 and trainer.epsilon() > 0
    assert grads.std().item() == pytest.approx(3.0 * 0.5 / 16, rel=0.08)
