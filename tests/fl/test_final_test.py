"""The federated job scores each site's test split once, in the final phase, and the summary carries it."""

from __future__ import annotations

import json

import pytest

from fedtune.data.split import TEST_FRACTION
from fedtune.fl.submit import find_fedtune_dir
from fedtune.tasks import get

pytestmark = pytest.mark.slow


def test_summary_carries_each_sites_final_test_with_n_and_interval(federation, make_job, tiny_text_trunk):
    result = federation.run(make_job("sentiment", tiny_text_trunk, name="sent-test"), timeout=600)
    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    job = json.loads((find_fedtune_dir(result) / "job.json").read_text())
    for site, folder in federation.site_data.items():
        split = get("sentiment").load_split(folder, seed=job["seed"], val_fraction=job["val_fraction"],
                                            test_fraction=TEST_FRACTION)
        s = summary["sites"][site]
        assert s["n_test"] == len(split.test) > 0 and s["n_val"] == len(split.val)
        assert 0.0 <= s["final_test"]["accuracy"] <= 1.0
        boot = s["final_test"]["bootstrap"]
        assert boot["n"] == len(set(split.test.split_ids()))
        ci = boot["ci"]["accuracy"]
        assert 0.0 <= ci["lo"] <= ci["hi"] <= 1.0
        assert "replicates" not in boot            # the reply carries n and intervals, no per-row data


def test_the_per_round_curve_is_the_global_model_on_each_sites_validation_split(federation, make_job,
                                                                                 tiny_text_trunk):
    """Round r + 1 starts by scoring the model each site received, the global model after round r; that is the
    curve compare and the report show. Checked against the server's own checkpoint of round 1."""
    from safetensors.torch import load_file

    from fedtune.compare import global_curves, local_round_curves
    from fedtune.fl.config import JobConfig
    from fedtune.train import Trainer

    result = federation.run(make_job("sentiment", tiny_text_trunk, name="sent-curve", rounds=2), timeout=600)
    fed_dir = find_fedtune_dir(result)
    summary = json.loads((fed_dir / "summary.json").read_text())
    job = JobConfig.from_dict(json.loads((fed_dir / "job.json").read_text()))
    task = get("sentiment")
    model = task.build_model(job.trunk_config())
    model.load_state_dict(load_file(str(fed_dir / "checkpoints" / "round-1.safetensors")))
    trainer = Trainer(model, job.train_config(), None)
    curves, local = global_curves(summary, "accuracy"), local_round_curves(summary, "accuracy")
    for site, folder in federation.site_data.items():
        val = task.load_split(folder, seed=job.seed, val_fraction=job.val_fraction, test_fraction=TEST_FRACTION).val
        expected = trainer.evaluate(val)["accuracy"]
        assert summary["rounds"][1]["sites"][site]["received"]["accuracy"] == pytest.approx(expected, abs=1e-6)
        assert curves[site] == [pytest.approx(expected, abs=1e-6), summary["sites"][site]["final_val"]["accuracy"]]
        assert local[site] == [summary["rounds"][r]["sites"][site]["accuracy"] for r in (0, 1)]
