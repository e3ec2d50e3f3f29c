"""Frozen-trunk embeddings are computed once per process for a given trunk content and data object (what makes
`compare`'s cross-site matrix and membership attack cheap), and never reused for a trunk whose weights differ."""

from __future__ import annotations

import torch

from fedtune.data import AssayStats, synthetic_fitness
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.train import TrainConfig, Trainer
from fedtune.train import embeddings as shared


def _counted(model):
    calls = []
    model.trunk.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_second_model_with_the_same_frozen_trunk_reuses_the_embeddings_a_changed_trunk_does_not(
        tiny_antibody_trunk):
    shared.clear()
    data = synthetic_fitness(30, seed=2)
    stats = AssayStats.fit(data)
    cfg = TrainConfig(progress=False, eval_batch_size=8)

    def trainer(model):
        return Trainer(model, cfg, stats)

    first = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    calls_first = _counted(first)
    emb_first = trainer(first).embeddings(data)
    assert calls_first                                       # computed by the trunk

    again = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    calls_again = _counted(again)
    emb_again = trainer(again).embeddings(data)
    assert not calls_again                                   # same weights, same rows: no trunk pass
    assert (emb_again == emb_first).all()

    other_rows = synthetic_fitness(30, seed=2)               # equal content, another object: not assumed equal
    trainer(again).embeddings(other_rows)
    assert calls_again

    changed = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    with torch.no_grad():
        next(changed.trunk.parameters()).add_(0.5)
    calls_changed = _counted(changed)
    emb_changed = trainer(changed).embeddings(data)
    assert calls_changed                                     # different weights: its own pass
    assert not (emb_changed == emb_first).all()

    fine_tuned = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="full"), data.assays)
    calls_full = _counted(fine_tuned)
    Trainer(fine_tuned, cfg, stats).embeddings(data)         # a trunk that trains never uses the shared store
    assert calls_full
