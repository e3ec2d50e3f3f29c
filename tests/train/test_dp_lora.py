"""DP-SGD on LoRA adapters + heads (fedtune.train.dp, trunk mode lora): Opacus' per-row gradients through
peft's lora.Linear layers are each row's own autograd gradient, the frozen base weights get none, the epsilon
reported is the accountant's figure, and the trunk modes DP-SGD does not cover are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtune.data import synthetic_sentiment, train_val_split
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.train import TrainConfig
from fedtune.train.ddp import set_dropout
from fedtune.train.dp import DPConfig, DPTrainer, accounted_epsilon, per_row_loss, plan


def _lora(trunk, freeze_a: bool = False):
    torch.manual_seed(0)
    model = build_model("sentiment", TrunkConfig(str(trunk), mode="lora", lora_freeze_a=freeze_a), [])
    with torch.no_grad():          # peft starts B at 0, where every A gradient is 0: give both a real gradient
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.2)
    return model


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("freeze_a", [False, True])
def test_per_row_gradients_through_peft_lora_are_each_rows_own_gradient(tiny_text_trunk, freeze_a):
    """The per-row gradients DPTrainer clips (Opacus hooks on peft's LoRA A/B and the heads, rows of different
    lengths padded together) equal autograd's gradient of each row's loss computed alone, unpadded."""
    model = _lora(tiny_text_trunk, freeze_a)
    set_dropout(model, 0.0)                       # the batched and the one-row passes must see the same network
    data = synthetic_sentiment(30, seed=1)
    trainer = DPTrainer(model, TrainConfig(batch_size=8, progress=False, device="cpu"), None,
                        dp=plan(DPConfig(noise_multiplier=1.0), len(data), 8, 1))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_B." in n for n in params) and any(n.startswith("heads.") for n in params)
    assert any(".lora_A." in n for n in params) != freeze_a
    idx = np.argsort(data.lengths())[[0, 7, 15, 29]]     # short to long: the batch pads
    assert len(set(data.lengths()[idx])) > 1
    model.train()
    rows = per_row_loss(model.task.loss, trainer._outputs(data, idx).float(), trainer._targets(data, idx))
    rows.sum().backward()
    batched = {n: p.grad_sample.detach().clone() for n, p in params.items()}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(getattr(p, "grad_sample", None) is None for p in model.parameters() if not p.requires_grad)
    trainer._gsm.disable_hooks()
    for i, row in enumerate(idx):
        one = np.array([row])
        loss = per_row_loss(model.task.loss, trainer._outputs(data, one).float(), trainer._targets(data, one)).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, g_batched), g in zip(batched.items(), grads):
            assert g_batched.shape == (len(idx), *g.shape)
            torch.testing.assert_close(g_batched[i], g, rtol=1e-4, atol=1e-6, msg=f"{name}, row {i}")
        assert sum(g.norm() ** 2 for g in grads) > 0


def test_lora_epsilon_after_rounds_is_the_accountants_and_the_adapters_move(tiny_text_trunk):
    model = _lora(tiny_text_trunk)
    data = synthetic_sentiment(120, seed=0)
    train, val = train_val_split(data, 0.2, seed=0)
    dp = plan(DPConfig(noise_multiplier=1.1, max_grad_norm=1.0), len(train), 16, 3)
    trainer = DPTrainer(model, TrainConfig(batch_size=16, epochs=3, patience=10, progress=False, device="cpu"),
                        None, dp=dp)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for _ in range(2):                 # two "rounds" of one epoch each: the accountant keeps counting
        trainer.fit(train, val, epochs=1)
    assert trainer.dp_steps == 2 * dp.steps_per_epoch == 2 * round(len(train) / 16)
    from opacus.accountants import RDPAccountant
    acc = RDPAccountant()
    acc.history = [(1.1, 16 / len(train), trainer.dp_steps)]
    assert trainer.epsilon() == pytest.approx(acc.get_epsilon(dp.delta), rel=1e-9)
    assert trainer.epsilon() == pytest.approx(accounted_epsilon(1.1, dp.sample_rate, trainer.dp_steps, dp.delta))
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(".lora_A." in n for n in moved) and any(".lora_B." in n for n in moved)
    assert np.isfinite(trainer.evaluate(val)["loss"])


@pytest.mark.parametrize("mode", ["full", "ptuning"])
def test_dp_refuses_trunk_modes_it_does_not_cover(tiny_text_trunk, mode):
    from fedtune.fl.config import JobConfig
    model = build_model("sentiment", TrunkConfig(str(tiny_text_trunk), mode=mode), [])
    with pytest.raises(ValueError, match=f"trunk mode 'frozen' .* or 'lora' .*not '{mode}'"):
        DPTrainer(model, TrainConfig(progress=False), None, dp=plan(DPConfig(epsilon=1), 40, 8, 1))
    with pytest.raises(ValueError, match=f"not '{mode}'"):
        JobConfig.create("sentiment", trunk=str(tiny_text_trunk), mode=mode, dp={"epsilon": 4.0})
    JobConfig.create("sentiment", trunk=str(tiny_text_trunk), mode="lora", dp={"epsilon": 4.0})
