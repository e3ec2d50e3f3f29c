"""API key, admin key, hot reload under concurrent load (zero failed requests), corrupt bundles refused."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_helpers import antibodies, metric_value, settings

from fedtune.bundle import load_bundle
from fedtune.serve.server import BackgroundServer

KEY = "s3cret-key"
ADMIN = "admin-k3y"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def keyed(global_bundle_a):
    with BackgroundServer(settings([global_bundle_a], api_key=KEY)) as srv:
        yield srv


def test_api_key_guards_predict_and_infer_but_not_health_or_metrics(keyed):
    body = {"antibodies": antibodies(1)}
    infer = {"inputs": [{"name": "heavy", "shape": [1], "datatype": "BYTES", "data": [antibodies(1)[0]["heavy"]]},
                        {"name": "light", "shape": [1], "datatype": "BYTES", "data": [antibodies(1)[0]["light"]]}]}
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        for method, path, payload in (("POST", "/v1/fitness/predict", body),
                                      ("POST", "/v2/models/fitness/infer", infer), ("GET", "/v1/models", None)):
            r = c.request(method, path, json=payload)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
            r = c.request(method, path, json=payload, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        assert c.post("/v1/fitness/predict", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/v1/fitness/predict", json=body, headers={"X-API-Key": KEY}).status_code == 200
        assert c.post("/v2/models/fitness/infer", json=infer, headers={"X-API-Key": KEY}).status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/v2/models/fitness", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        r = c.post("/v1/fitness/predict", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert r.json()["heads"] == "global"


def test_metrics_auth_option(global_bundle_a):
    with BackgroundServer(settings([global_bundle_a], api_key=KEY, metrics_auth=True, warmup=False)) as srv:
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/metrics", headers={"X-API-Key": KEY}).status_code == 200
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 200


def test_reload_under_concurrent_load_never_fails_a_request(global_bundle_a, global_bundle_b, corrupt_bundle,
                                                            serve_dir):
    digest_a, digest_b = load_bundle(global_bundle_a).digest, load_bundle(global_bundle_b).digest
    with BackgroundServer(settings([global_bundle_a], max_wait_ms=2, admin_key=ADMIN)) as srv:
        done = threading.Event()
        results: list[tuple[int, str]] = []
        errors: list[str] = []

        def hammer(seed):
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                for _ in range(2000):                   # bounded; stops as soon as the reloads are done
                    if done.is_set():
                        break
                    try:
                        r = c.post("/v1/fitness/predict", json={"antibodies": antibodies(2, seed=seed)})
                        results.append((r.status_code, r.json().get("digest", r.text)))
                    except Exception as exc:     # a dropped connection is a failure too
                        errors.append(repr(exc))

        def answered_more(n: int) -> None:
            """Wait (bounded) until the hammer threads got `n` more answers: each reload happens under load."""
            target = len(results) + n
            for _ in range(6000):
                if len(results) >= target or errors or not any(t.is_alive() for t in threads):
                    return
                time.sleep(0.01)

        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        try:
            with httpx.Client(base_url=srv.url, timeout=120, headers=AUTH) as admin:
                for target, digest in ((global_bundle_b, digest_b), (global_bundle_a, digest_a),
                                       (global_bundle_b, digest_b)):
                    answered_more(10)
                    r = admin.post("/v1/admin/reload", json={"bundles": [str(target)]})
                    assert r.status_code == 200, r.text
                    assert r.json()["models"] == {"fitness": digest}
                answered_more(10)
                r = admin.post("/v1/admin/reload", json={"bundles": [str(corrupt_bundle)]})
                assert r.status_code == 422, r.text
                body = r.json()
                assert "corrupt" in body["error"] and body["details"]["serving"] == {"fitness": digest_b}
                r = admin.post("/v1/admin/reload", json={"bundles": [str(serve_dir / "no-such-bundle")]})
                assert r.status_code == 422 and "not a bundle" in r.json()["error"]
                answered_more(10)
        finally:
            done.set()
            for t in threads:
                t.join(60)
        failed = [r for r in results if r[0] != 200]
        print(f"\nreload under load: {len(results)} requests, {len(failed) + len(errors)} failed, "
              f"3 reloads done and 2 refused while they ran")
        assert not errors, errors[:3]
        assert not failed, failed[:3]
        seen = {d for _, d in results}
        assert seen <= {digest_a, digest_b} and len(seen) == 2, seen
        assert results[-1][1] == digest_b              # the corrupt bundle never replaced the one serving
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/v1/models").json()["models"][0]["digest"] == digest_b
            text = c.get("/metrics").text
            assert metric_value(text, "fedtune_reloads_total") == 3
            assert metric_value(text, "fedtune_reload_failures_total") == 2
            assert metric_value(text, "fedtune_model_info", {"digest": digest_b}) == 1
            assert metric_value(text, "fedtune_model_info", {"digest": digest_a}) == 0
            # a reload without a body re-reads the folder being served
            r = c.post("/v1/admin/reload", timeout=60, headers=AUTH)
            assert r.status_code == 200 and r.json()["models"] == {"fitness": digest_b}
