"""Which parameters train and which travel, for every trunk mode, both task models and both head modes.

What trains: `requires_grad` (and what one optimisation step actually changes). What travels in a federated
round: `travelling_keys(model, private_heads)`, the trainable parameters (plus the trunk's buffers when the
whole trunk trains), without `heads.` when heads are private. P-tuning: only the prompt encoder and the heads.
"""

from __future__ import annotations

import pytest
import torch

from fedtune.data import SYNTHETIC_ASSAYS, AssayStats, synthetic_fitness, synthetic_sentiment
from fedtune.models import TRUNK_MODES, TrunkConfig, travelling_keys
from fedtune.tasks import build_model
from fedtune.train import TrainConfig, Trainer

KINDS = ["fitness", "sentiment"]


def make(kind: str, mode: str, tiny_antibody_trunk, tiny_text_trunk):
    trunk = tiny_antibody_trunk if kind == "fitness" else tiny_text_trunk
    torch.manual_seed(0)
    cfg = TrunkConfig(str(trunk), mode=mode, virtual_tokens=4, prompt_hidden=16)
    return build_model(kind, cfg, SYNTHETIC_ASSAYS if kind == "fitness" else None)


def expected_trunk_trainable(model, mode: str) -> set[str]:
    trunk = {n for n, _ in model.named_parameters() if n.startswith("trunk.")}
    if mode == "frozen":
        return set()
    if mode == "full":
        return trunk
    if mode == "lora":
        return {n for n in trunk if "lora_" in n}
    return {n for n in trunk if n.startswith("trunk.prompt.encoder.")}      # ptuning


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", TRUNK_MODES)
@pytest.mark.parametrize("heads", ["shared", "private"])
def test_what_trains_and_what_travels(kind, mode, heads, tiny_antibody_trunk, tiny_text_trunk):
    model = make(kind, mode, tiny_antibody_trunk, tiny_text_trunk)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    head_params = {n for n in params if n.startswith("heads.")}
    assert head_params and all(n.startswith(("trunk.", "heads.")) for n in params)

    # what trains: every head parameter, plus the trunk part the mode names, nothing else
    trunk_trainable = expected_trunk_trainable(model, mode)
    assert trainable == head_params | trunk_trainable
    if mode != "frozen":
        assert trunk_trainable, f"{mode}: some trunk parameters must train"
    if mode in ("lora", "ptuning"):   # adapters only: the encoder's own weights stay frozen
        encoder = {n for n in params if n.startswith("trunk.encoder.") and "lora_" not in n}
        assert encoder and not encoder & trainable

    # what travels
    private = heads == "private"
    state = model.state_dict()
    travel = travelling_keys(model, private_heads=private)
    assert len(travel) == len(set(travel)) and set(travel) <= set(state)
    trunk_buffers = {n for n, _ in model.named_buffers() if n.startswith("trunk.") and n in state}
    expected = trunk_trainable | (trunk_buffers if mode == "full" else set()) | (set() if private else head_params)
    assert set(travel) == expected
    assert not any(k.startswith("heads.") for k in travel) if private else head_params <= set(travel)
    if mode == "ptuning":      # the prompt encoder and (shared) heads only
        assert all(k.startswith(("trunk.prompt.encoder.", "heads.")) for k in travel)
        assert any(k.startswith("trunk.prompt.encoder.") for k in travel)
    if mode == "frozen" and private:
        assert travel == []     # nothing leaves the site in a round: the trunk is fixed, the heads stay home
    if mode != "full":          # frozen weights never travel: a fraction of the model goes over the wire
        assert not any(k.startswith("trunk.encoder.") and "lora_" not in k for k in travel)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", TRUNK_MODES)
def test_a_training_step_changes_only_what_trains(kind, mode, tiny_antibody_trunk, tiny_text_trunk):
    model = make(kind, mode, tiny_antibody_trunk, tiny_text_trunk)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    data = synthetic_fitness(12, seed=3) if kind == "fitness" else synthetic_sentiment(12, seed=3)
    stats = AssayStats.fit(data) if kind == "fitness" else None
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=6, lr=1e-2, adapter_lr=1e-2, head_lr=1e-2,
                                         warmup_ratio=0.0, progress=False, device="cpu"), stats)
    trainer.train_epoch(data)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable, f"{mode}: frozen entries changed: {sorted(changed - trainable)[:5]}"
    assert any(k.startswith("heads.") for k in changed)
    trunk_changed = {k for k in changed if k.startswith("trunk.")}
    assert bool(trunk_changed) == (mode != "frozen")
    # whatever changed travels when heads are shared; with private heads only the trunk part does
    assert changed <= set(travelling_keys(model, private_heads=False))
    assert trunk_changed <= set(travelling_keys(model, private_heads=True))


def travelling_bytes(model) -> int:
    """What a site sends each round with shared heads: the bytes of its travelling tensors."""
    state = model.state_dict()
    return sum(state[k].numel() * state[k].element_size() for k in travelling_keys(model))


def test_trunk_modes_order_the_bytes_a_site_sends(tiny_text_trunk):
    """full = whole trunk + heads; lora = adapters + heads; ptuning = prompt encoder + heads; frozen = heads
    only (tests/test_compare.py checks that a federation's bytes per round are these)."""
    sent = {m: travelling_bytes(build_model("sentiment", TrunkConfig(str(tiny_text_trunk), mode=m)))
            for m in ("full", "lora", "ptuning", "frozen")}
    assert sent["full"] > sent["lora"] > sent["frozen"] > 0
    assert sent["full"] > sent["ptuning"] > sent["frozen"]
