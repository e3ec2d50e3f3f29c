
import numpy as np
import pytest

from fedtune.data import AssayStats, synthetic_fitness, synthetic_sentiment, train_val_split
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.train import TrainConfig, Trainer


def test_fitness_training_on_synthetic_data_learns(tiny_antibody_trunk):
    data = synthetic_fitness(300, seed=1)
    train, val = train_val_split(data, 0.2, seed=0)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="full"), data.assays)
    trainer = Trainer(model, TrainConfig(epochs=15, lr=1e-3, progress=False), AssayStats.fit(train))
    history = trainer.fit(train, val)
    final = trainer.evaluate(val)
    assert final["mean_pearson"] > 0.5
    assert history[-1]["val"]["loss"] < history[0]["val"]["loss"]
    assay = final["tasks"]["thermostability"]["assays"]["synthetic_tm"]
    assert 1.0 < assay["rmse"] < 20.0      # in degrees C, not z units


def test_masked_loss_ignores_missing_labels(tiny_antibody_trunk):
    data = synthetic_fitness(40, seed=0)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk)), data.assays)
    trainer = Trainer(model, TrainConfig(progress=False), AssayStats.fit(data))
    import torch
    out = torch.zeros(2, 3)
    target = torch.tensor([[1.0, float("nan"), 1.0], [float("nan"), float("nan"), 3.0]])
    assert trainer.loss(out, target).item() == pytest.approx((1 + 1 + 9) / 3)


def test_frozen_trunk_trains_heads_only_and_early_stops(tiny_antibody_trunk):
    data = synthetic_fitness(200, seed=4)
    train, val = train_val_split(data, 0.2, seed=0)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    trunk_before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    trainer = Trainer(model, TrainConfig(epochs=200, patience=3, progress=False), AssayStats.fit(train))
    history = trainer.fit(train, val)
    assert len(history) < 200
    for k, v in model.trunk.state_dict().items():
        assert np.array_equal(v.numpy(), trunk_before[k].numpy())
    best = min(h["val"]["loss"] for h in history)
    assert trainer.evaluate(val)["loss"] == pytest.approx(best, rel=1e-4)


def test_sentiment_training_reports_accuracy_and_macro_f1(tiny_text_trunk, tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    data = synthetic_sentiment(240, seed=0)
    train, val = train_val_split(data, 0.25, seed=0)
    model = build_model("sentiment", TrunkConfig(str(tiny_text_trunk), mode="full"))
    trainer = Trainer(model, TrainConfig(epochs=8, lr=1e-3, progress=False), writer=SummaryWriter(str(tmp_path)))
    trainer.fit(train, val)
    final = trainer.evaluate(val)
    assert final["accuracy"] > 0.7 and 0 < final["macro_f1"] <= 1
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
