"""FFA-LoRA (`TrunkConfig(mode="lora", lora_freeze_a=True)`): A is drawn from a shared seed and frozen, only
B trains and travels, so the server's average of the sites' B gives exactly the average of their B @ A.
With plain LoRA, A and B averaged separately are not the average of the products."""

from __future__ import annotations

import torch

from fedtune.data import synthetic_sentiment
from fedtune.models import TrunkConfig, travelling_keys
from fedtune.tasks import build_model
from fedtune.train import TrainConfig, Trainer


def site_model(trunk, freeze_a: bool, global_seed: int):
    torch.manual_seed(global_seed)      # each site's process is in a different random state
    cfg = TrunkConfig(str(trunk), mode="lora", lora_freeze_a=freeze_a, lora_seed=7)
    return build_model("sentiment", cfg)


def train_on(model, data_seed: int) -> dict:
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=4, lr=5e-2, adapter_lr=5e-2, head_lr=1e-2,
                                         warmup_ratio=0.0, progress=False, device="cpu"), None)
    trainer.train_epoch(synthetic_sentiment(16, seed=data_seed))
    return {k: v.detach().clone().double() for k, v in model.state_dict().items()}


def pairs(state: dict) -> list[tuple[str, str]]:
    return [(k, k.replace(".lora_A.", ".lora_B.")) for k in state if ".lora_A." in k]


def test_a_is_shared_frozen_and_stays_home(tiny_text_trunk):
    one, two = site_model(tiny_text_trunk, True, 1), site_model(tiny_text_trunk, True, 2)
    a_keys = [k for k in one.state_dict() if ".lora_A." in k]
    b_keys = [k for k in one.state_dict() if ".lora_B." in k]
    assert a_keys and len(a_keys) == len(b_keys)
    for k in a_keys:        # the same A at every site, whatever the process's random state
        assert torch.equal(one.state_dict()[k], two.state_dict()[k])
        assert one.state_dict()[k].abs().sum() > 0
    trainable = {n for n, p in one.named_parameters() if p.requires_grad}
    travel = set(travelling_keys(one))
    assert not set(a_keys) & trainable and not set(a_keys) & travel
    assert set(b_keys) <= trainable and set(b_keys) <= travel
    # another seed, another A: the seed is what makes it shared
    other = build_model("sentiment", TrunkConfig(str(tiny_text_trunk), mode="lora", lora_freeze_a=True, lora_seed=8))
    assert not torch.equal(other.state_dict()[a_keys[0]], one.state_dict()[a_keys[0]])


def test_average_of_b_times_a_is_the_product_of_the_average(tiny_text_trunk):
    states = [train_on(site_model(tiny_text_trunk, True, s), data_seed=10 + s) for s in range(3)]
    for a, b in pairs(states[0]):
        A = states[0][a]
        assert all(torch.equal(s[a], A) for s in states)            # training left A where it was
        assert not torch.equal(states[0][b], states[1][b])          # the sites' B moved differently
        mean_of_products = sum(s[b] @ s[a] for s in states) / len(states)
        product_of_means = (sum(s[b] for s in states) / len(states)) @ A
        torch.testing.assert_close(product_of_means, mean_of_products, rtol=1e-12, atol=1e-15)


def test_plain_lora_averaged_separately_is_not_the_average_product(tiny_text_trunk):
    states = []
    for s in range(2):
        model = site_model(tiny_text_trunk, False, s)
        train_on(model, data_seed=10 + s)                 # B leaves zero ...
        states.append(train_on(model, data_seed=20 + s))  # ... then A moves too
    gaps = []
    for a, b in pairs(states[0]):
        mean_of_products = sum(s[b] @ s[a] for s in states) / 2
        product_of_means = (sum(s[b] for s in states) / 2) @ (sum(s[a] for s in states) / 2)
        gaps.append(float((mean_of_products - product_of_means).abs().max()))
    assert max(gaps) > 1e-6
