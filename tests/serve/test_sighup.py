"""`fedtune serve` as a real process: a SIGHUP that arrives while the bundles are still loading neither kills
the process nor is lost (it reloads once the service is up)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_helpers import metric_value, terminate, wait_until_ready

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sighup_during_the_initial_load_is_deferred_not_fatal(global_bundle_a):
    port = _free_port()
    env = {**os.environ, "FEDTUNE_DEVICE": "cpu", "FEDTUNE_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--bundle", str(global_bundle_a),
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:                                       # the CLI says when it starts loading
            line = lines.get(timeout=120)
            seen.append(line)
            if line.startswith("loading "):
                break
        proc.send_signal(signal.SIGHUP)                   # while the bundle loads (or just after)
        wait_until_ready(proc, url, output=lambda: "".join(seen) + "".join(list(lines.queue)))
        for _ in range(300):                              # the deferred SIGHUP reloads once serving
            if metric_value(httpx.get(url + "/metrics", timeout=10).text, "fedtune_reloads_total") == 1:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the SIGHUP sent during loading was lost")
        assert proc.poll() is None
    finally:
        terminate(proc)
