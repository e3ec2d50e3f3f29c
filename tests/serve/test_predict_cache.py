"""The per-part embedding cache: bounded in bytes (LRU), exact (the same embeddings as the model's own
`embed_tokens`), counted in /metrics of a real uvicorn server, and used by `fedtune predict` with the same
outputs as without it."""

from __future__ import annotations

import csv

import httpx
import numpy as np
import pytest
import torch
from serve_helpers import antibodies, metric_value, settings, texts

from fedtune.bundle import load_bundle
from fedtune.score.run import predict
from fedtune.serve.cache import ENTRY_OVERHEAD, EmbeddingCache, embed_items
from fedtune.serve.kinds import FileOptions
from fedtune.serve.server import BackgroundServer
from fedtune.tasks import get


def test_the_cache_stays_within_its_bytes_and_drops_the_least_recently_used():
    vec = np.zeros(16, dtype=np.float32)                       # 64 bytes
    entry = 64 + 1 + ENTRY_OVERHEAD                            # a one-letter part
    cache = EmbeddingCache(3 * entry)
    cache.put_many("d", {"A": vec, "B": vec + 1, "C": vec + 2})
    assert len(cache) == 3 and cache.bytes == 3 * entry
    assert set(cache.get_many("d", ["A"])) == {"A"}          # A is now the most recently used
    cache.put_many("d", {"D": vec + 3})
    assert set(cache.get_many("d", ["A", "B", "C", "D"])) == {"A", "C", "D"}     # B went
    assert cache.bytes == 3 * entry and cache.stats()["evictions"] == 1
    assert cache.get_many("other-bundle", ["A"]) == {}        # keyed by namespace (the bundle digest) too
    stored = cache.get_many("d", ["C"])["C"]
    assert stored.base is None                                 # a copy, not a view holding a whole batch
    with pytest.raises(ValueError):
        EmbeddingCache(-1)


@pytest.mark.parametrize("which", ["sites_bundle", "sentiment_bundle", "sequences_bundle"])
def test_embeddings_part_by_part_equal_the_models_own(which, request):
    bundle = load_bundle(request.getfixturevalue(which))
    task, model = get(bundle.kind), bundle.model
    abs_ = antibodies(6, seed=1)
    items = {"fitness": [(a["heavy"], abs_[0]["light"]) for a in abs_], "sentiment": texts(6),
             "sequences": [{"chain": a["heavy"]} for a in abs_]}[bundle.kind]
    with torch.inference_mode():
        expected = model.embed_tokens(task.tokenize(model, items)).float()
        plain = embed_items(task, model, items)
        cache = EmbeddingCache(1 << 20)
        first = embed_items(task, model, items, cache=cache, namespace=bundle.digest, max_batch_tokens=128)
        again = embed_items(task, model, items, cache=cache, namespace=bundle.digest)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, first)
    parts = sum(len(task.item_parts(model, it)) for it in items)
    distinct = len({p for it in items for p in task.item_parts(model, it)})
    assert cache.stats()["misses"] == distinct and cache.stats()["hits"] == 2 * parts - distinct


def _post(client, abs_):
    r = client.post("/v1/fitness/predict", json={"antibodies": abs_, "assays": ["synthetic_hic"]})
    assert r.status_code == 200, r.text
    return r.json()


def _scores(resp) -> np.ndarray:
    return np.array([[*p["scores"].values(), *(a["z"] for a in p["assays"].values())] for p in resp["predictions"]])


def test_cache_hits_and_misses_in_metrics_and_the_same_answers_without_it(global_bundle_a):
    light = antibodies(1, seed=2)[0]["light"]
    abs_ = [{**a, "light": light} for a in antibodies(4, seed=3)]     # heavy-chain variants over one light chain
    with BackgroundServer(settings([global_bundle_a], warmup=False)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        first = _post(c, abs_)
        text = c.get("/metrics").text
        assert metric_value(text, "fedtune_embedding_cache_misses_total") == 5      # 4 heavy + 1 light
        assert metric_value(text, "fedtune_embedding_cache_hits_total") == 3        # the light chain repeated
        assert metric_value(text, "fedtune_embedding_cache_entries") == 5
        assert metric_value(text, "fedtune_embedding_cache_bytes") > 5 * 4 * srv.registry.models["fitness"].bundle.model.trunk.hidden_size
        assert metric_value(text, "fedtune_embedding_cache_max_bytes") == 64 * 1024 * 1024
        second = _post(c, abs_)
        text = c.get("/metrics").text
        assert metric_value(text, "fedtune_embedding_cache_misses_total") == 5
        assert metric_value(text, "fedtune_embedding_cache_hits_total") == 3 + 8
    np.testing.assert_array_equal(_scores(second), _scores(first))
    with BackgroundServer(settings([global_bundle_a], warmup=False, embedding_cache_mb=0)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        off = _post(c, abs_)
        text = c.get("/metrics").text
        assert metric_value(text, "fedtune_embedding_cache_max_bytes") == 0
        assert metric_value(text, "fedtune_embedding_cache_hits_total") == 0
    np.testing.assert_allclose(_scores(off), _scores(first), atol=1e-5)


def test_predict_gives_the_same_outputs_with_and_without_the_cache(sites_bundle, tmp_path):
    light = antibodies(1, seed=4)[0]["light"]
    abs_ = antibodies(30, seed=5)
    inp = tmp_path / "lib.csv"
    with inp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "heavy", "light"])
        w.writerows([[a["id"], a["heavy"], light] for a in abs_] + [[a["id"] + "-again", a["heavy"], light] for a in abs_])
    opts = FileOptions(raw=True)
    on = predict(sites_bundle, inp, tmp_path / "on.csv", batch_size=8, cache_mb=16, progress=False, opts=opts)
    off = predict(sites_bundle, inp, tmp_path / "off.csv", batch_size=8, cache_mb=0, progress=False, opts=opts)
    assert on.cache["misses"] == 31 and on.cache["hits"] == 2 * 60 - 31 and off.cache == {}
    rows = {}
    for name in ("on", "off"):
        with (tmp_path / f"{name}.csv").open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows[name] = np.array([[float(v) for v in r[3:]] for r in reader])
    assert header[3:][:6] == list(load_bundle(sites_bundle).model.tasks) and len(rows["on"]) == 60
    np.testing.assert_allclose(rows["on"], rows["off"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rows["on"][:30], rows["on"][30:])     # a variant seen again: from the cache
