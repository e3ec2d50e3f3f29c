"""The batcher under faults: one bad request in a batch, a worker that dies, a worker that is stuck (request
timeout, bounded queue). Real bundles and a real uvicorn server; the faults are items handed straight to the
real batcher (no request passing validation could carry them)."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
from serve_helpers import antibodies, settings

from fedtune.bundle import load_bundle
from fedtune.serve.batcher import Job, MicroBatcher
from fedtune.serve.server import BackgroundServer


class NotAChain:
    """Has a length (so it is batched like a chain) but no tokenizer can read it: the model fails on it."""

    def __len__(self) -> int:
        return 5


class Fatal(BaseException):
    pass


class KillsWorker:
    """Raises a BaseException inside the worker: stands in for any fault that ends the worker thread."""

    def __len__(self) -> int:
        raise Fatal("worker killed by the test")


class Stuck:
    """Blocks the worker (as a hung device would) until the test releases it."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __len__(self) -> int:
        self.entered.set()
        self.release.wait(300)
        return 5


def _job(bundle, pairs) -> Job:
    return Job(items=list(pairs), head_sets=("global",), opts={"tasks": tuple(bundle.model.tasks)})


def test_one_failing_request_does_not_fail_the_rest_of_its_batch(global_bundle_a):
    bundle = load_bundle(global_bundle_a)
    abs_ = antibodies(3, seed=5)
    pairs = [(a["heavy"], a["light"]) for a in abs_]
    batcher = MicroBatcher("fitness", bundle, max_batch=4, max_wait_ms=600_000)   # waits for all 4 items
    try:
        good1, bad, good2 = _job(bundle, pairs[:2]), _job(bundle, [(pairs[0][0], NotAChain())]), \
            _job(bundle, pairs[2:])
        for job in (good1, bad, good2):
            batcher.submit(job)
        results = [good1.future.result(120), good2.future.result(120)]
        with pytest.raises(Exception):
            bad.future.result(120)
    finally:
        batcher.close(wait=30)
    expected = bundle.predict(pairs)
    for task, values in expected.items():
        got = np.concatenate([results[0]["global"][task], results[1]["global"][task]])
        np.testing.assert_allclose(got, values, atol=1e-4)


def test_dead_worker_answers_503_and_fails_liveness(global_bundle_a):
    with BackgroundServer(settings([global_bundle_a], max_batch=2, max_wait_ms=10_000, warmup=False)) as srv:
        batcher = srv.registry.models["fitness"].batcher
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.get("/v2/health/live").status_code == 200
            batcher.submit(Job(items=[(KillsWorker(), "DIQ")], head_sets=("global",)))
            # this request fills the batch of 2 and is taken with the item that kills the worker (or, if it
            # arrives after the batch wait, finds the worker already dead): 503 either way, never a hang
            r = c.post("/v1/fitness/predict", json={"antibodies": antibodies(1)})
            assert r.status_code == 503 and r.json()["code"] == "worker_dead", r.text
            r = c.get("/v2/health/live")
            assert r.status_code == 503 and "fitness" in r.json()["error"]
            r = c.post("/v1/fitness/predict", json={"antibodies": antibodies(1)})      # refused at once
            assert r.status_code == 503 and r.json()["code"] == "worker_dead"


def test_stuck_worker_gives_504_and_a_full_queue_gives_503_with_retry_after(global_bundle_a):
    s = settings([global_bundle_a], max_batch=1, max_wait_ms=0, max_items=2, max_queue=3, request_timeout_s=1,
                 warmup=False)
    with BackgroundServer(s) as srv:
        bundle = srv.registry.models["fitness"].bundle
        batcher = srv.registry.models["fitness"].batcher
        stuck = Stuck()
        batcher.submit(Job(items=[(stuck, "DIQ")], head_sets=("global",)))
        assert stuck.entered.wait(60)                   # the worker holds it: nothing else gets computed
        ab = antibodies(2)
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            try:
                r = c.post("/v1/fitness/predict", json={"antibodies": ab[:1]})
                assert r.status_code == 504 and r.json()["code"] == "timeout", r.text
                assert "FEDTUNE_REQUEST_TIMEOUT_S" in r.json()["error"]
                assert c.get("/v2/health/live").status_code == 200     # stuck is not dead
                # queue limit 3 items: the timed-out request's item (dropped when reached) + 2 more
                waiting = [_job(bundle, [(a["heavy"], a["light"])]) for a in ab]
                for job in waiting:
                    batcher.submit(job)
                r = c.post("/v1/fitness/predict", json={"antibodies": ab[:1]})
                assert r.status_code == 503 and r.json()["code"] == "overloaded", r.text
                assert r.headers["retry-after"] == "1"
            finally:
                stuck.release.set()
            for job in waiting:                         # the worker recovers and answers what was queued
                assert set(job.future.result(120)) == {"global"}
            r = c.post("/v1/fitness/predict", json={"antibodies": ab})
            assert r.status_code == 200, r.text
