"""Predictions over a real uvicorn server equal Bundle.predict_* directly; private site heads differ."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import httpx
from serve_helpers import antibodies, metric_value, settings, texts

from fedtune.bundle import load_bundle
from fedtune.serve.server import BackgroundServer

ATOL = 1e-4


@pytest.fixture(scope="module")
def fitness(sites_bundle):
    return load_bundle(sites_bundle)


@pytest.fixture(scope="module")
def sentiment(sentiment_bundle):
    return load_bundle(sentiment_bundle)


def _expected_scores(bundle, abs_, head_set=None):
    out = bundle.predict([(a["heavy"], a["light"]) for a in abs_], head_set=head_set)
    return {t: v.mean(1) for t, v in out.items()}, out


def _got(resp, task):
    return np.array([p["scores"][task] for p in resp["predictions"]])


def test_site_heads_differ_and_equal_the_bundle(client, fitness):
    abs_ = antibodies(6)
    responses = {}
    for site in ("site-1", "site-2", None):
        body = {"antibodies": abs_} if site is None else {"site": site, "antibodies": abs_}
        r = client.post("/v1/fitness/predict", json=body)
        assert r.status_code == 200, r.text
        resp = responses[site] = r.json()
        expected, _ = _expected_scores(fitness, abs_, site)
        assert resp["tasks"] == fitness.model.tasks and resp["digest"] == fitness.digest
        assert [p["id"] for p in resp["predictions"]] == [a["id"] for a in abs_]
        for task in fitness.model.tasks:
            np.testing.assert_allclose(_got(resp, task), expected[task], atol=ATOL)
    assert responses["site-1"]["heads"] == "site" and responses["site-1"]["head_sets"] == ["site-1"]
    assert responses[None]["heads"] == "mean-over-sites" and responses[None]["head_sets"] == ["site-1", "site-2"]
    for task in fitness.model.tasks:
        assert not np.allclose(_got(responses["site-1"], task), _got(responses["site-2"], task), atol=1e-3)


def test_assays_in_their_units_and_task_subset(client, fitness):
    abs_ = antibodies(4, seed=3)
    r = client.post("/v1/fitness/predict", json={"antibodies": abs_, "tasks": ["thermostability"],
                                                 "assays": ["synthetic_hic", "thermostability/synthetic_tm"]})
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["tasks"] == ["thermostability"]
    assert set(resp["predictions"][0]["scores"]) == {"thermostability"}
    heavy, light = [a["heavy"] for a in abs_], [a["light"] for a in abs_]
    for key, task, col in (("aggregation/synthetic_hic", "aggregation", 1), ("thermostability/synthetic_tm",
                                                                                "thermostability", 0)):
        values = []
        for site in fitness.sites:          # mean over sites of each site's value in its own units
            z = fitness.predict(list(zip(heavy, light)), head_set=site)[task][:, col]
            st = fitness.stats[site]
            k = st.index(key)
            values.append(st.mean[k] + st.sign[k] * z * st.std[k])
        got = np.array([p["assays"][key]["value"] for p in resp["predictions"]])
        np.testing.assert_allclose(got, np.mean(values, 0), rtol=1e-4, atol=1e-3)
    assert resp["predictions"][0]["assays"]["aggregation/synthetic_hic"]["favourable"] == "lower"


def test_sentiment_equals_the_bundle(client, sentiment):
    ts = texts(5)
    for site in (None, "site-1"):
        r = client.post("/v1/sentiment/predict", json={"texts": ts, "site": site})
        assert r.status_code == 200, r.text
        resp = r.json()
        expected = sentiment.predict(ts, head_set=site)
        got = np.array([[p["probabilities"][lab] for lab in ("negative", "neutral", "positive")]
                        for p in resp["predictions"]])
        np.testing.assert_allclose(got, expected, atol=ATOL)
        assert [p["label"] for p in resp["predictions"]] == [("negative", "neutral", "positive")[i]
                                                             for i in expected.argmax(1)]
        assert resp["heads"] == ("global" if site is None else "site")


def test_concurrent_requests_share_batches_and_metrics_count_items(client, fitness):
    before = client.get("/metrics").text
    items0 = metric_value(before, "fedtune_items_predicted_total", {"model": "fitness"})
    batches0 = metric_value(before, "fedtune_batch_size_count", {"model": "fitness"})
    reqs = [antibodies(3, seed=s) for s in range(12)]

    def call(abs_):
        return client.post("/v1/fitness/predict", json={"antibodies": abs_, "site": "site-2"})

    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, reqs))
    for abs_, r in zip(reqs, results):
        assert r.status_code == 200, r.text
        expected, _ = _expected_scores(fitness, abs_, "site-2")
        np.testing.assert_allclose(_got(r.json(), "binding"), expected["binding"], atol=ATOL)
    after = client.get("/metrics").text
    assert metric_value(after, "fedtune_items_predicted_total", {"model": "fitness"}) - items0 == 36
    batches = metric_value(after, "fedtune_batch_size_count", {"model": "fitness"}) - batches0
    assert 1 <= batches < 12, "concurrent requests should share micro-batches"
    assert metric_value(after, "fedtune_requests_total",
                        {"route": "/v1/fitness/predict", "method": "POST", "status": "200"}) >= 12
    assert metric_value(after, "fedtune_request_duration_seconds_count", {"route": "/v1/fitness/predict"}) >= 12
    assert metric_value(after, "fedtune_model_info", {"model": "fitness", "digest": fitness.digest}) == 1
    assert "fedtune_queue_depth" in after and "fedtune_reload_failures_total" in after


def test_models_card(client, fitness):
    r = client.get("/v1/models")
    assert r.status_code == 200
    cards = {m["name"]: m for m in r.json()["models"]}
    fit = cards["fitness"]
    assert fit["digest"] == fitness.digest and fit["sites"] == ["site-1", "site-2"]
    assert fit["tasks"] == fitness.model.tasks and fit["provenance"] == {"how": "test"}
    assert fit["metrics"]["site-1"]["mean_pearson"] == 0.4 and fit["heads_mode"] == "private"
    assert fit["trunk"]["architecture"] == "bert" and fit["loaded_at"]
    assert cards["sentiment"]["labels"] == ["negative", "neutral", "positive"]


def test_kserve_v2(client, fitness, sentiment):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/fitness").json()
    assert [i["name"] for i in meta["inputs"]] == ["heavy", "light"] and meta["inputs"][0]["datatype"] == "BYTES"
    assert [o["name"] for o in meta["outputs"]] == fitness.model.tasks
    assert client.get("/v2/models/fitness/ready").json()["ready"] is True

    abs_ = antibodies(3)
    body = {"id": "req-1", "parameters": {"site": "site-1"}, "inputs": [
        {"name": "heavy", "shape": [3], "datatype": "BYTES", "data": [a["heavy"] for a in abs_]},
        {"name": "light", "shape": [3, 1], "datatype": "BYTES", "data": [[a["light"]] for a in abs_]}]}
    r = client.post("/v2/models/fitness/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "fitness" and out["id"] == "req-1" and out["model_version"] == fitness.digest[:12]
    expected, _ = _expected_scores(fitness, abs_, "site-1")
    for o in out["outputs"]:
        assert o["datatype"] == "FP32" and o["shape"] == [3]
        np.testing.assert_allclose(o["data"], expected[o["name"]], atol=ATOL)
    body["outputs"] = [{"name": "binding"}]
    r = client.post(f"/v2/models/fitness/versions/{fitness.digest[:12]}/infer", json=body)
    assert [o["name"] for o in r.json()["outputs"]] == ["binding"]

    ts = texts(2)
    r = client.post("/v2/models/sentiment/infer", json={"inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ts}]})
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["probabilities"]["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(outs["probabilities"]["data"], (2, 3)), sentiment.predict(ts),
                               atol=ATOL)
    assert len(outs["label"]["data"]) == 2


def test_requests_split_over_small_batches_and_token_chunks(sites_bundle, fitness):
    """A request larger than max_batch spans several micro-batches, each cut into several trunk passes."""
    abs_ = antibodies(10, seed=7)
    with BackgroundServer(settings([sites_bundle], max_batch=4, max_batch_tokens=300, warmup=False)) as srv:
        r = httpx.post(srv.url + "/v1/fitness/predict", json={"antibodies": abs_, "site": "site-1"}, timeout=60)
        metrics = httpx.get(srv.url + "/metrics").text
    assert r.status_code == 200, r.text
    expected, _ = _expected_scores(fitness, abs_, "site-1")
    for task in fitness.model.tasks:
        np.testing.assert_allclose(_got(r.json(), task), expected[task], atol=ATOL)
    assert metric_value(metrics, "fedtune_batch_size_count", {"model": "fitness"}) == 3
