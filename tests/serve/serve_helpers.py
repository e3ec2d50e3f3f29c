"""Helpers shared by the service tests (imported as `serve_helpers`: pytest puts this folder on sys.path)."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest

from fedtune.data import synthetic_fitness, synthetic_sentiment
from fedtune.serve.settings import ServeSettings


def settings(bundles, **kw) -> ServeSettings:
    base = dict(bundles=[str(b) for b in bundles], device="cpu", max_batch=32, max_wait_ms=10, max_items=16,
                max_body_bytes=64 * 1024, max_length=200, max_text_length=500)
    return ServeSettings(**{**base, **kw})


def antibodies(n: int, seed: int = 0) -> list[dict]:
    """Realistic-looking chains (the synthetic ones) with ids."""
    data = synthetic_fitness(max(n, 2), seed=seed)
    return [{"id": f"ab-{i}", "heavy": data.heavy[i], "light": data.light[i]} for i in range(n)]


def texts(n: int) -> list[str]:
    return synthetic_sentiment(max(n, 2), seed=0).texts[:n]


def metric_value(text: str, name: str, labels: dict | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a `fedtune serve` process and wait for it; kill it when it does not stop in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_ready(proc: subprocess.Popen, url: str, output=lambda: "", attempts: int = 600) -> None:
    """Poll `url`/v2/health/ready every 0.2 s until it answers 200; fail, with `output()`, when the process exits
    first or after `attempts` polls."""
    for _ in range(attempts):
        if proc.poll() is not None:
            pytest.fail(f"fedtune serve exited {proc.returncode}:\n{output()}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server did not come up:\n{output()}")
