"""The membership-inference attack's AUC and the report's privacy section (fedtune.membership,
fedtune.privacy_report)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.membership import attack_auc, row_losses
from fedtune.report import write_report


def test_attack_auc_is_the_roc_auc_of_minus_the_loss():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    members, others = rng.gamma(1.0, 0.5, 300), rng.gamma(1.0, 1.0, 200)
    members[:20] = others[:20]                  # ties count half
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], -np.r_[members, others])
    assert attack_auc(members, others) == pytest.approx(expected)
    assert attack_auc(np.zeros(5), np.ones(5)) == 1.0 and attack_auc(np.ones(5), np.ones(5)) == 0.5


def test_row_losses_are_the_kinds_loss_per_row(tiny_antibody_trunk):
    import torch

    from fedtune.data import AssayStats, synthetic_fitness
    from fedtune.models import TrunkConfig
    from fedtune.tasks import build_model
    from fedtune.train import TrainConfig, Trainer
    data = synthetic_fitness(30, seed=2)
    model = build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays)
    stats, cfg = AssayStats.fit(data), TrainConfig(progress=False)
    losses = row_losses(model, stats, cfg, data)
    trainer = Trainer(model, cfg, stats)
    for i in (0, 7, 29):           # each row alone through the ordinary loss
        with torch.inference_mode():
            out = trainer._outputs(data, np.array([i]))
            ref = trainer.loss(out.float(), trainer._targets(data, np.array([i]))).item()
        assert losses[i] == pytest.approx(ref, rel=1e-5)


def _metrics(p):
    return {"loss": 1.0, "mean_pearson": p, "tasks": {}}


def test_report_has_the_privacy_table_and_plot(tmp_path):
    sites = ["site-1", "site-2"]
    results = {"kind": "fitness", "sites": sites, "notes": [],
               "runs": {"fedavg": {s: _metrics(0.4) for s in sites}, "fedavg-dp4": {s: _metrics(0.3) for s in sites},
                        "fedavg-dp1": {"site-2": _metrics(0.1)}},
               "privacy": {"fedavg": {"dp": {}, "sites": {}, "refused": {}, "membership": {"auc": 0.71}},
                           "fedavg-dp4": {"dp": {"epsilon": 4.0}, "sites": {"site-1": {"epsilon": 3.9},
                                                                           "site-2": {"epsilon": 3.95}},
                                          "refused": {}, "membership": {"auc": 0.52}},
                           "fedavg-dp1": {"dp": {"epsilon": 1.0}, "sites": {"site-2": {"epsilon": 0.99}},
                                          "refused": {"site-1": "epsilon 1 is above ..."},
                                          "membership": {"auc": 0.5}}}}
    report = write_report(results, tmp_path).read_text()
    assert "| fedavg | no DP | – | 0.400 | 0.710 | – |" in report
    assert "| fedavg-dp4 | 4 | 3.95 | 0.300 | 0.520 | – |" in report
    assert "| fedavg-dp1 | 1 | 0.99 | 0.100 | 0.500 | site-1 |" in report
    assert (tmp_path / "privacy.png").stat().st_size > 1000 and "![privacy.png](privacy.png)" in report
    # a comparison without DP has no privacy section
    del results["runs"]["fedavg-dp4"], results["runs"]["fedavg-dp1"]
    results["privacy"] = {"fedavg": results["privacy"]["fedavg"]}
    assert "Differential privacy" not in write_report(results, tmp_path / "plain").read_text()
