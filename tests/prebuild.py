"""Container images built in the background while the rest of the suite runs (a pytest plugin, loaded by
tests/conftest.py).

A cold image build (debootstrap base image, then torch, NVFlare and fedtune into the runtime image) takes
about ten minutes on a 2-core CI machine, much of it waiting on the package mirrors. When the session selected
a test marked `docker` and this machine can run the engine, the build starts right after collection, exactly
as a user runs it (`eval "$(scripts/docker-engine.sh start)"; scripts/build-images.sh --cpu`, in an
environment without FEDTUNE_/DOCKER_/COMPOSE_ variables), and the docker tests are moved to the end of the run.
Those tests then find the engine up and the build cache warm; they still run the README's commands as written
(`docker compose up` builds again, from cache). A failed prebuild only costs the time: the docker tests build
for themselves and report the failure there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREBUILD = "fedtune-prebuild"
_state: dict = {}


def can_build() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("docker", "dockerd", "debootstrap"))


def user_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FEDTUNE_", "DOCKER_", "COMPOSE_"))}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)   # stable: docker tests last


def pytest_collection_finish(session):
    if session.config.option.collectonly or os.environ.get("FEDTUNE_NO_PREBUILD") or not can_build():
        return
    if not any(item.get_closest_marker("docker") for item in session.items):
        return
    log = Path(tempfile.mkdtemp(prefix=PREBUILD + "-")) / "build.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-ec", 'eval "$(scripts/docker-engine.sh start)"\nbash scripts/build-images.sh --cpu'],
            cwd=REPO, env=user_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    _state.update(proc=proc, log=log, started=time.monotonic())


def pytest_unconfigure(config):
    proc = _state.get("proc")
    if proc is not None and proc.poll() is None:      # the session ended early: stop the build
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass


def wait_for_prebuild(timeout: float = 1800) -> str:
    """Wait for the background build, if one was started; returns a line saying how it went."""
    proc = _state.get("proc")
    if proc is None:
        return "no prebuild (not started)"
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"prebuild still running after {timeout:.0f} s; continuing"
    took = time.monotonic() - _state["started"]
    if rc != 0:
        tail = _state["log"].read_text(errors="replace")[-2000:]
        return f"prebuild failed (exit {rc}) after {took:.0f} s; the test builds itself. Last output:\n{tail}"
    return f"prebuild finished in {took:.0f} s (started after collection)"


@pytest.fixture(scope="session")
def prebuilt_images() -> str:
    """Blocks until the background image build (if any) has ended; the docker tests take it first."""
    line = wait_for_prebuild()
    print(line)
    return line
