"""services/inference/entrypoint.sh on this machine (no container): it serves a real bundle with `fedtune serve`
(real uvicorn), survives SIGHUP and turns it into a reload, notices a re-export (`<root>/<kind>` is a symlink
that the export points at a new version folder) and reloads with the admin key."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy_helpers import REPO

ENTRYPOINT = REPO / "services" / "inference" / "entrypoint.sh"
WAIT = 240       # a guard against hanging, not a timing assertion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, log: Path, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout} s; log:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def export(root: Path, trunk: Path, seed: int) -> None:
    """A sentiment bundle at `<root>/sentiment`, saved the way `fedtune export` saves one."""
    import torch

    from fedtune.bundle import save_bundle
    from fedtune.models import TrunkConfig
    from fedtune.tasks import build_model

    torch.manual_seed(seed)     # different heads, so two exports have different digests
    cfg = TrunkConfig(str(trunk), mode="frozen")
    save_bundle(root / "sentiment", build_model("sentiment", cfg), trunk_cfg=cfg)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_text_trunk):
    """The entrypoint serving the sentiment bundle exported to `<root>/sentiment`."""
    root = tmp_path_factory.mktemp("bundles")
    export(root, tiny_text_trunk, seed=0)
    port, admin_key, api_key = free_port(), secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FEDTUNE_BUNDLE_ROOT": str(root), "FEDTUNE_SERVE_KINDS": "sentiment", "FEDTUNE_HOST": "127.0.0.1",
           "FEDTUNE_PORT": str(port), "FEDTUNE_WATCH_SECONDS": "1", "FEDTUNE_WARMUP": "false",
           "FEDTUNE_API_KEY": api_key, "FEDTUNE_ADMIN_KEY": admin_key, "OMP_NUM_THREADS": "1"}
    log = root.parent / "entrypoint.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("serving", lambda: proc.poll() is not None or ready(url), log)
        assert proc.poll() is None, log.read_text()
        yield {"proc": proc, "url": url, "root": root, "log": log, "api_key": api_key, "admin_key": admin_key,
               "trunk": tiny_text_trunk}
    finally:   # the whole session: a server left behind by a dead entrypoint too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sighup_reloads_and_the_entrypoint_keeps_running(served):
    proc, log = served["proc"], served["log"]
    proc.send_signal(signal.SIGHUP)
    wait_for("SIGHUP forwarded", lambda: proc.poll() is not None or "inference: SIGHUP: reloading" in log.read_text(),
             log)
    assert proc.poll() is None, f"the entrypoint died on SIGHUP:\n{log.read_text()[-3000:]}"
    wait_for("the service reloaded on SIGHUP", lambda: "SIGHUP reload" in log.read_text(), log)
    assert proc.poll() is None, f"the entrypoint died on SIGHUP:\n{log.read_text()[-3000:]}"
    assert ready(served["url"])


def test_a_re_export_is_reloaded_with_the_admin_key(served):
    proc, log, root = served["proc"], served["log"], served["root"]
    auth = {"Authorization": f"Bearer {served['api_key']}"}
    digest = lambda: httpx.get(served["url"] + "/v1/models", headers=auth).json()["models"][0]["digest"]
    old = digest()
    before = log.read_text().count("inference: reloaded")
    link_before = os.readlink(root / "sentiment")
    export(root, served["trunk"], seed=1)
    assert (root / "sentiment").is_symlink() and os.readlink(root / "sentiment") != link_before
    wait_for("reload after the re-export",
             lambda: log.read_text().count("inference: reloaded") > before or "reload failed" in log.read_text(), log)
    assert "reload failed" not in log.read_text(), log.read_text()[-3000:]
    assert proc.poll() is None and ready(served["url"])
    assert digest() != old, "still serving the old version"


def test_sigterm_stops_the_server_and_the_entrypoint(served):
    proc = served["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) in (0, 143, -signal.SIGTERM)
    wait_for("port closed", lambda: not ready(served["url"]), served["log"])
