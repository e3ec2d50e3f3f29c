"""Settings from FEDTUNE_* env vars, CLI flags overriding them, and `fedtune serve` as a real process
reloading its bundle on SIGHUP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from serve_helpers import antibodies, metric_value, terminate

from fedtune.bundle import load_bundle
from fedtune.serve.settings import ServeSettings


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("FEDTUNE_BUNDLES", "/a/fitness, /b/sentiment")
    monkeypatch.setenv("FEDTUNE_PORT", "9001")
    monkeypatch.setenv("FEDTUNE_API_KEY", "zebra-42")
    monkeypatch.setenv("FEDTUNE_MAX_BATCH", "8")
    monkeypatch.setenv("FEDTUNE_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("FEDTUNE_METRICS_AUTH", "true")
    monkeypatch.setenv("FEDTUNE_LOG_LEVEL", "WARNING")
    s = ServeSettings()
    assert s.bundles == ["/a/fitness", "/b/sentiment"] and s.port == 9001 and s.key() == "zebra-42"
    assert s.max_batch == 8 and s.max_wait_ms == 2.5 and s.metrics_auth and s.log_level == "warning"
    assert "zebra-42" not in repr(s)                  # the key is a secret
    o = ServeSettings(bundles=["/c"], port=9002)  # what the CLI does with its flags
    assert o.bundles == ["/c"] and o.port == 9002 and o.max_batch == 8
    assert s.embedding_cache_mb == 64.0
    monkeypatch.setenv("FEDTUNE_EMBEDDING_CACHE_MB", "0")
    assert ServeSettings().embedding_cache_mb == 0.0
    monkeypatch.setenv("FEDTUNE_MAX_BATCH", "0")
    with pytest.raises(ValueError):
        ServeSettings()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_a_corrupt_bundle(corrupt_bundle):
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--bundle", str(corrupt_bundle)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "corrupt" in proc.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_serve_command_reloads_on_sighup(serve_dir, global_bundle_a, global_bundle_b):
    live = serve_dir / "live-bundle"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(global_bundle_a, live)
    digest_a, digest_b = load_bundle(global_bundle_a).digest, load_bundle(global_bundle_b).digest
    port = _free_port()
    env = {**os.environ, "FEDTUNE_MAX_WAIT_MS": "1", "FEDTUNE_DEVICE": "cpu", "FEDTUNE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--bundle", str(live),
           "--host", "127.0.0.1", "--port", str(port), "--embedding-cache-mb", "1.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/fitness/predict", json={"antibodies": antibodies(2)}, timeout=30)
        assert r.status_code == 200 and r.json()["digest"] == digest_a
        # a new export lands in the served folder (atomic rename, as save_bundle does), then SIGHUP
        staged = serve_dir / ".live-bundle.new"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(global_bundle_b, staged)
        old = serve_dir / ".live-bundle.old"
        os.replace(live, old)
        os.replace(staged, live)
        shutil.rmtree(old)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(url + "/v1/models", timeout=10).json()["models"][0]["digest"] != digest_b:
            assert time.monotonic() < deadline, "SIGHUP did not reload the bundle"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/fitness/predict", json={"antibodies": antibodies(2)}, timeout=30)
        assert r.status_code == 200 and r.json()["digest"] == digest_b
        metrics = httpx.get(url + "/metrics").text
        assert "fedtune_reloads_total 1.0" in metrics
        assert metric_value(metrics, "fedtune_embedding_cache_max_bytes") == 1.5 * 2**20     # --embedding-cache-mb
        assert metric_value(metrics, "fedtune_embedding_cache_misses_total") > 0
    finally:
        terminate(proc)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit status -15)
    assert proc.returncode in (0, -signal.SIGTERM), proc.stdout.read()
