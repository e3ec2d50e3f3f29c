"""The federated job scores each site's test split once, in the final phase, and the summary carries it."""

from __future__ import annotations

import json

import pytest

from fedtune.data.split import TEST_FRACTION
from fedtune.fl.submit import find_fedtune_dir
from fedtune.tasks import get

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sentiment_job(federation, make_job, tiny_text_trunk):
    """One two-round sentiment job with personalised heads, shared by the tests of this module:
    (job, result folder)."""
    job = make_job("sentiment", tiny_text_trunk, name="sent-test", rounds=2, personal_epochs=3)
    return job, federation.run(job, timeout=600)


def test_summary_carries_each_sites_final_test_with_n_and_interval(federation, sentiment_job):
    _, result = sentiment_job
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


def test_the_per_round_curve_is_the_global_model_on_each_sites_validation_split(federation, sentiment_job):
    """Round r + 1 starts by scoring the model each site received, the global model after round r; that is the
    curve compare and the report show. Checked against the server's own checkpoint of round 1."""
    from safetensors.torch import load_file

    from fedtune.compare import global_curves, local_round_curves
    from fedtune.fl.config import JobConfig
    from fedtune.train import Trainer

    _, result = sentiment_job
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


def test_personalised_heads_are_scored_exported_and_served_per_site(federation, sentiment_job, tmp_path):
    """personal_epochs: after the rounds each site fine-tunes a copy of the final heads on its own data; the summary
    carries their validation and test scores, the bundle holds the global heads plus every site's personalised
    heads, and `site` serves them (their predictions reproduce the site's own validation score)."""
    import httpx

    from fedtune.bundle import load_bundle
    from fedtune.data.fpb import SENTIMENT_LABELS
    from fedtune.fl.export import export_bundle
    from fedtune.serve.server import BackgroundServer
    from fedtune.serve.settings import ServeSettings
    from fedtune.train.metrics import classification_metrics

    job, result = sentiment_job
    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    bundle_dir = export_bundle(result, tmp_path / "bundle")
    bundle = load_bundle(bundle_dir)
    assert sorted(bundle.head_sets) == sorted(["global", *federation.site_data])
    task = get("sentiment")
    for site, folder in federation.site_data.items():
        s = summary["sites"][site]
        assert 0.0 <= s["personal_test"]["accuracy"] <= 1.0 and s["personal_test"]["bootstrap"]["n"] > 0
        val = task.load_split(folder, seed=job.seed, val_fraction=job.val_fraction, test_fraction=TEST_FRACTION).val
        got = classification_metrics(bundle.predict(val.texts, site), val.labels, SENTIMENT_LABELS)
        assert got["accuracy"] == pytest.approx(s["personal_val"]["accuracy"], abs=1e-6)
        glob = classification_metrics(bundle.predict(val.texts), val.labels, SENTIMENT_LABELS)
        assert glob["accuracy"] == pytest.approx(s["final_val"]["accuracy"], abs=1e-6)
    site = sorted(federation.site_data)[0]
    texts = ["Operating profit rose sharply.", "Sales fell by half."]
    settings = ServeSettings(bundles=[str(bundle_dir)], device="cpu", api_key=None)
    with BackgroundServer(settings) as srv:
        resp = httpx.post(f"{srv.url}/v1/sentiment/predict", json={"texts": texts, "site": site}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["heads"] == "site" and resp.json()["head_sets"] == [site]
    expected = bundle.predict(texts, site)
    for p, row in zip(resp.json()["predictions"], expected):
        assert [p["probabilities"][lab] for lab in SENTIMENT_LABELS] == pytest.approx(row.tolist(), abs=1e-5)


def test_personal_epochs_must_be_a_non_negative_integer(make_job, tiny_text_trunk):
    with pytest.raises(ValueError, match="personal_epochs"):
        make_job("sentiment", tiny_text_trunk, personal_epochs=-1)
