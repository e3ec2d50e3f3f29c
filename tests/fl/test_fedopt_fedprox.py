"""Server optimisers (FedAvgM, FedAdam) on the aggregate, and FedProx at the site (issue 13, section 2)."""

from __future__ import annotations

import math

import pytest
import torch

from fedtune.data import synthetic_sentiment
from fedtune.fl.aggregate import ServerOptimizer
from fedtune.fl.client import SiteRunner
from fedtune.fl.config import JobConfig
from fedtune.tasks import get


def test_none_takes_the_aggregate_as_it_is():
    g, a = {"w": torch.zeros(3)}, {"w": torch.tensor([1.0, -2.0, 0.5])}
    assert ServerOptimizer("none", lr=0.1)(g, a)["w"] is a["w"]


def test_momentum_accumulates_the_pseudo_gradient():
    opt = ServerOptimizer("momentum", lr=0.5, beta1=0.9)
    g = {"w": torch.zeros(2), "steps": torch.tensor([3])}
    d = torch.tensor([1.0, -1.0])
    first = opt(g, {"w": g["w"] + d, "steps": torch.tensor([4])})
    assert torch.allclose(first["w"], 0.5 * d)                       # m = d
    assert first["steps"].item() == 4                                # integer buffers pass through
    second = opt(first, {"w": first["w"] + d, "steps": torch.tensor([5])})
    assert torch.allclose(second["w"], first["w"] + 0.5 * (0.9 * d + d))   # m = 0.9 d + d


def test_adam_normalises_each_coordinate():
    opt = ServerOptimizer("adam", lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    g = {"w": torch.zeros(3, dtype=torch.float64)}
    d = torch.tensor([0.5, -4.0, 0.0], dtype=torch.float64)
    new = opt(g, {"w": d.clone()})["w"]
    m, v = 0.1 * d, 0.01 * d * d
    assert torch.allclose(new, 0.01 * m / (v.sqrt() + 1e-3))
    # changes 8x apart move the model by about lr each: the point of an adaptive server optimiser
    assert math.isclose(abs(new[0]), abs(new[1]), rel_tol=0.1) and new[2] == 0


@pytest.mark.parametrize("fields, message", [({"server_opt": "sgd"}, "server optimiser"),
                                             ({"server_opt": "adam", "server_lr": 0.0}, "server learning rate"),
                                             ({"prox_mu": -1.0}, "prox_mu"),
                                             ({"prox_mu": float("nan")}, "prox_mu")])
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        JobConfig(kind="sentiment", **fields)


def _round_distance(tmp_path, tiny_text_trunk, mu: float) -> float:
    """How far one round of local training moves the travelling weights from where the round started."""
    site = get("sentiment").write(synthetic_sentiment(60, seed=2), tmp_path / f"site-{mu}")
    job = JobConfig(kind="sentiment", local_epochs=4, prox_mu=mu,
                    trunk={"source": str(tiny_text_trunk), "mode": "frozen"},
                    train={"batch_size": 8, "progress": False, "patience": 100, "head_lr": 5e-2, "seed": 0})
    runner = SiteRunner(job, "site-1", site, tmp_path / f"runs-{mu}")
    start = {k: v.detach().clone() for k, v in runner.model.state_dict().items() if k in runner.keys}
    try:
        out, _, _ = runner.train_round(dict(start), {"round": 1})
    finally:
        runner.trainer.writer.close()
    return math.sqrt(sum(float(((out[k] - start[k]) ** 2).sum()) for k in start))


def test_fedprox_keeps_local_training_near_the_global_model(tmp_path, tiny_text_trunk):
    free, pulled = _round_distance(tmp_path, tiny_text_trunk, 0.0), _round_distance(tmp_path, tiny_text_trunk, 50.0)
    assert free > 0 and pulled < 0.5 * free


@pytest.mark.slow
def test_fedavgm_over_a_real_federation_follows_the_momentum_rule(federation, make_job, tiny_text_trunk):
    """Two rounds with server momentum (lr 1, beta 0.9): the global model after round 2 is avg2 + 0.9 (avg1 - g0),
    recomputed from what the sites uploaded (kept with FEDTUNE_SAVE_UPDATES) and the job's initial model."""
    import json

    from safetensors.torch import load_file

    from fedtune.fl.submit import find_fedtune_dir

    job = make_job("sentiment", tiny_text_trunk, name="fedavgm", rounds=2, server_opt="momentum", prox_mu=0.01)
    job_ids: list[str] = []
    result = federation.run(job, timeout=600, on_submit=job_ids.append)
    fed_dir = find_fedtune_dir(result)
    summary = json.loads((fed_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["job"]["server_opt"] == "momentum"
    torch.manual_seed(job.seed)
    g0 = get("sentiment").build_model(job.trunk_config()).state_dict()
    weights = {site: summary["sites"][site]["n_train"] for site in federation.site_data}

    def average(rnd: int) -> dict:
        ups = {site: load_file(str(next(federation.workdir.rglob(
            f"fedtune-runs/{job_ids[0]}/{site}/update-round-{rnd}.safetensors")))) for site in weights}
        total = sum(weights.values())
        return {k: sum(ups[s][k].double() * w for s, w in weights.items()) / total for k in ups[next(iter(ups))]}

    avg1, avg2 = average(1), average(2)
    g2 = load_file(str(fed_dir / "checkpoints" / "round-2.safetensors"))
    for k in avg2:
        expected = avg2[k] + 0.9 * (avg1[k] - g0[k].double())
        assert torch.allclose(g2[k].double(), expected, atol=1e-5), k
