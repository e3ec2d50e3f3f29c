"""The whole compose stack on a real Docker engine (CPU override, tiny profile): build the images, `up`, wait
until the submitter has trained and exported both bundles and the inference service serves them, post a
fitness and a sentiment prediction, check that Prometheus scraped the inference service (and the training
progress), then `down -v`.

Where no engine runs, scripts/docker-engine.sh starts one (Debian's dockerd on a private socket, a
debootstrap base image: no registry needed); it needs root, dockerd and debootstrap (scripts/ci-deps.sh)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from deploy_helpers import REPO, unavailable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROJECT = "fedtune-test"
FILES = ["-f", "compose.yaml", "-f", "compose.cpu.yaml"]
HEAVY = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK"
LIGHT = "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYYCQQSYSTPLTF"
TASKS = {"aggregation", "binding", "expression", "immunogenicity", "polyreactivity", "thermostability"}
UP_TIMEOUT = 900


def run(cmd: list[str], env: dict, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{(res.stdout + res.stderr)[-4000:]}")
    return res


def works(cmd: list[str], env: dict) -> bool:
    try:
        return run(cmd, env, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def docker_env():
    """An environment whose `docker` reaches an engine with the compose plugin: the caller's own, or one
    started by scripts/docker-engine.sh (stopped again afterwards; its image cache stays)."""
    env = dict(os.environ)
    if shutil.which("docker") and works(["docker", "info"], env) and works(["docker", "compose", "version"], env):
        if "FEDTUNE_BASE_IMAGE" not in env and works(["docker", "image", "inspect", "fedtune/base:bookworm"], env):
            env["FEDTUNE_BASE_IMAGE"] = "fedtune/base:bookworm"     # no registry here: the debootstrap image
        yield env
        return
    missing = [t for t in ("docker", "dockerd", "debootstrap") if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        unavailable(f"no Docker engine, and none can be started here (missing: {missing or 'root'})")
    res = run(["bash", "scripts/docker-engine.sh", "start"], env, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"scripts/docker-engine.sh start failed:\n{(res.stdout + res.stderr)[-3000:]}")
    for line in res.stdout.splitlines():
        if line.startswith("export "):
            key, value = line[len("export "):].split("=", 1)
            env[key] = value
    env["FEDTUNE_BASE_IMAGE"] = "fedtune/base:bookworm"     # made by docker-engine.sh (debootstrap)
    try:
        yield env
    finally:
        run(["bash", "scripts/docker-engine.sh", "stop"], env, timeout=120)


def service_states(compose: list[str], env: dict) -> dict[str, dict]:
    res = run([*compose, "ps", "-a", "--format", "json"], env, timeout=60)
    rows = []
    for line in res.stdout.splitlines():
        line = line.strip()
        if line.startswith("["):
            rows.extend(json.loads(line))
        elif line.startswith("{"):
            rows.append(json.loads(line))
    return {r["Service"]: r for r in rows}


def ready(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def prometheus_query(prom: httpx.Client, query: str) -> list[dict]:
    resp = prom.get("/api/v1/query", params={"query": query})
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def test_compose_up_trains_exports_serves_and_is_scraped(docker_env):
    inference_port, prometheus_port = free_port(), free_port()
    env = {**docker_env, "FEDTUNE_PROFILE": "tiny", "FEDTUNE_INFERENCE_PORT": str(inference_port),
           "FEDTUNE_PROMETHEUS_PORT": str(prometheus_port)}
    compose = ["docker", "compose", *FILES, "-p", PROJECT]
    t0 = time.monotonic()
    run(["bash", "scripts/build-images.sh", "--cpu"], env, timeout=1200, check=True)
    t_build = time.monotonic() - t0
    run([*compose, "down", "-v", "--remove-orphans", "-t", "5"], env, timeout=300)   # leftovers of a killed run
    ok = False
    try:
        run([*compose, "up", "-d", "--no-build"], env, timeout=900, check=True)
        client = httpx.Client(base_url=f"http://127.0.0.1:{inference_port}", timeout=60)
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            states = service_states(compose, env)
            sub = states.get("submitter", {})
            if sub.get("State") == "exited" and sub.get("ExitCode") != 0:
                pytest.fail(f"the submitter failed (exit {sub.get('ExitCode')})")
            for name in ("fl-server", "site-1", "site-2", "site-3", "inference"):
                if states.get(name, {}).get("State") == "exited":
                    pytest.fail(f"{name} exited ({states[name].get('ExitCode')})")
            if (sub.get("State") == "exited" and ready(client, "/v2/models/fitness/ready")
                    and ready(client, "/v2/models/sentiment/ready") and ready(client, "/v2/health/ready")):
                break
            assert time.monotonic() < deadline, f"not serving both bundles after {UP_TIMEOUT} s: {states}"
            time.sleep(5)
        t_up = time.monotonic() - t0 - t_build

        # fitness: six task scores per antibody, finite
        resp = client.post("/v1/fitness/predict", json={"antibodies": [
            {"id": "ab-1", "heavy": HEAVY, "light": LIGHT}, {"id": "ab-2", "heavy": HEAVY[:-3], "light": LIGHT}]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == "fitness" and [p["id"] for p in body["predictions"]] == ["ab-1", "ab-2"]
        for pred in body["predictions"]:
            assert set(pred["scores"]) == TASKS
            assert all(math.isfinite(v) for v in pred["scores"].values())
        # sentiment: a label and three probabilities summing to one
        texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The company cut 500 jobs."]
        resp = client.post("/v1/sentiment/predict", json={"texts": texts})
        assert resp.status_code == 200, resp.text
        preds = resp.json()["predictions"]
        assert len(preds) == 2
        for pred in preds:
            probs = pred["probabilities"]
            assert set(probs) == {"negative", "neutral", "positive"} and pred["label"] in probs
            assert abs(sum(probs.values()) - 1) < 1e-4 and pred["label"] == max(probs, key=probs.get)

        # the service came up on the first bundle and reloaded when the second was exported
        logs = run([*compose, "logs", "--no-color", "inference"], env).stdout
        assert "inference: reloaded" in logs, logs[-3000:]

        # Prometheus scraped the inference service, and the training progress while the jobs ran
        prom = httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=30)
        deadline = time.monotonic() + 120
        while True:
            up = prometheus_query(prom, 'up{job="inference"}')
            if up and up[0]["value"][1] == "1":
                break
            assert time.monotonic() < deadline, f"Prometheus has no up{{job=\"inference\"}} == 1: {up}"
            time.sleep(3)
        assert prometheus_query(prom, 'fedtune_items_predicted_total{job="inference"}') or \
            prometheus_query(prom, 'fedtune_model_info{job="inference"}')
        trained = prometheus_query(prom, 'last_over_time(fedtune_training_state{job="training"}[1h])')
        assert {s["metric"]["kind"] for s in trained} >= {"fitness"}, trained
        print(f"\ncompose stack: images {t_build:.0f} s, up to serving {t_up:.0f} s")
        ok = True
    finally:
        if not ok:
            print(run([*compose, "ps", "-a"], env).stdout)
            print(run([*compose, "logs", "--no-color", "--tail", "60"], env).stdout[-20000:])
        run([*compose, "down", "-v", "--remove-orphans", "-t", "10"], env, timeout=300)
