"""The README's Deployment commands, run as written on a real Docker engine without an image registry:
`eval "$(scripts/docker-engine.sh start)"`, then `FEDTUNE_PROFILE=tiny docker compose -f compose.yaml -f
compose.cpu.yaml up` (which builds the images), then, from a second shell, the README's key and curl lines.
The test waits until the submitter has trained and exported both bundles and the inference service serves
them, checks the keys (predictions need the API key, reload needs the admin key), posts fitness and sentiment
predictions, checks that Prometheus scraped the inference service and the training progress, then `down -v`.

Only the environment differs from a user's shell: a project name and free host ports (so that nothing else on
this machine is disturbed); `localhost:8000` in the README's curl line becomes that port. FEDTUNE_BASE_IMAGE is
removed from the environment: the README's eval must set it. Needs root, dockerd and debootstrap
(scripts/ci-deps.sh installs them)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from deploy_helpers import REPO, unavailable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROJECT = "fedtune-test"
HEAVY = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK"
LIGHT = "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYYCQQSYSTPLTF"
TASKS = {"aggregation", "binding", "expression", "immunogenicity", "polyreactivity", "thermostability"}
UP_TIMEOUT = 2400        # from nothing: engine, base image, images, provisioning, two tiny jobs (a guard, not a check)


def run(cmd: list[str], env: dict, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{(res.stdout + res.stderr)[-4000:]}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_commands() -> dict[str, str]:
    """The README's Deployment commands by role, each exactly as written (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Deployment"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        current += line + "\n"
        if not line.rstrip().endswith("\\"):
            commands.append(current)
            current = ""
    found = {}
    for cmd in commands:
        if cmd.startswith('eval "$(scripts/docker-engine.sh start)"'):
            found["engine"] = cmd
        elif cmd.startswith("FEDTUNE_PROFILE=tiny docker compose -f compose.yaml -f compose.cpu.yaml up"):
            found["up"] = cmd
        elif cmd.startswith("KEY=$("):
            found["key"] = cmd
        elif cmd.startswith("curl ") and "/v1/sentiment/predict" in cmd:
            found["curl"] = cmd
    assert set(found) == {"engine", "up", "key", "curl"}, f"README Deployment block changed: {found}"
    return found


@pytest.fixture(scope="module")
def user_env(prebuilt_images):
    """A user's shell on this machine: no engine variables, no FEDTUNE_* settings, a project of our own."""
    missing = [t for t in ("docker", "dockerd", "debootstrap") if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        unavailable(f"the README's engine cannot be started here (missing: {missing or 'root'})")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FEDTUNE_", "DOCKER_", "COMPOSE_"))}
    env.update(COMPOSE_PROJECT_NAME=PROJECT, FEDTUNE_INFERENCE_PORT=str(free_port()),
               FEDTUNE_PROMETHEUS_PORT=str(free_port()))
    return env


def engine_env(env: dict) -> dict:
    """`env` plus the exports of the README's engine (for the test's own docker calls)."""
    res = run(["bash", "scripts/docker-engine.sh", "env"], env, check=True)
    out = dict(env)
    for line in res.stdout.splitlines():
        key, value = line[len("export "):].split("=", 1)
        out[key] = value
    return out


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


def test_readme_deployment_commands_train_export_serve_and_are_scraped(user_env, tmp_path):
    cmds = readme_commands()
    port, prom_port = user_env["FEDTUNE_INFERENCE_PORT"], user_env["FEDTUNE_PROMETHEUS_PORT"]
    log = tmp_path / "up.log"
    t0 = time.monotonic()
    # the user's first shell: the engine, then `up` in the foreground (it builds the images first)
    with open(log, "wb") as out:
        up = subprocess.Popen(["bash", "-ec", cmds["engine"] + cmds["up"]], cwd=REPO, env=user_env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    env = None
    compose = ["docker", "compose", "-f", "compose.yaml", "-f", "compose.cpu.yaml"]
    ok = False
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            if up.poll() is not None:
                pytest.fail(f"the README's engine/up commands exited {up.returncode}:\n{log.read_text()[-5000:]}")
            if env is None and Path("/var/tmp/fedtune-docker/docker.sock").exists():
                env = engine_env(user_env)
            states = service_states(compose, env) if env else {}
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
        t_up = time.monotonic() - t0

        # the user's second shell: the same eval, the README's key line and curl line
        second = cmds["engine"] + cmds["key"] + 'printf "%s\\n" "$KEY"\n' + \
            cmds["curl"].replace("localhost:8000", f"localhost:{port}")
        res = run(["bash", "-ec", second], user_env, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        key, answer = res.stdout.split("\n", 1)
        body = json.loads(answer)
        assert body["model"] == "sentiment" and len(body["predictions"]) == 1, body
        assert body["predictions"][0]["label"] in {"negative", "neutral", "positive"}
        auth = {"Authorization": f"Bearer {key}"}

        # without the key: 401; the API key does not open the admin routes; /metrics stays open for Prometheus
        texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The company cut 500 jobs."]
        assert client.post("/v1/sentiment/predict", json={"texts": texts}).status_code == 401
        assert client.post("/v1/sentiment/predict", json={"texts": texts},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/admin/reload", headers=auth).status_code in (401, 403)
        assert client.get("/metrics").status_code == 200
        # the keys are private to the service's user, and two different ones
        keys = run([*compose, "exec", "-T", "inference", "stat", "-c", "%a %U %n", "/keys/api-key",
                    "/keys/admin-key"], env, check=True).stdout.split("\n")
        assert all(line.startswith("600 fedtune ") for line in keys if line), keys
        admin = run([*compose, "exec", "-T", "inference", "cat", "/keys/admin-key"], env, check=True).stdout
        assert admin and admin != key

        # fitness: six task scores per antibody, finite
        resp = client.post("/v1/fitness/predict", headers=auth, json={"antibodies": [
            {"id": "ab-1", "heavy": HEAVY, "light": LIGHT}, {"id": "ab-2", "heavy": HEAVY[:-3], "light": LIGHT}]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == "fitness" and [p["id"] for p in body["predictions"]] == ["ab-1", "ab-2"]
        for pred in body["predictions"]:
            assert set(pred["scores"]) == TASKS
            assert all(math.isfinite(v) for v in pred["scores"].values())
        # sentiment: a label and three probabilities summing to one
        resp = client.post("/v1/sentiment/predict", json={"texts": texts}, headers=auth)
        assert resp.status_code == 200, resp.text
        preds = resp.json()["predictions"]
        assert len(preds) == 2
        for pred in preds:
            probs = pred["probabilities"]
            assert set(probs) == {"negative", "neutral", "positive"} and pred["label"] in probs
            assert abs(sum(probs.values()) - 1) < 1e-4 and pred["label"] == max(probs, key=probs.get)

        # the service came up on the first bundle and reloaded (with the admin key) when the second was exported
        logs = run([*compose, "logs", "--no-color", "inference"], env).stdout
        assert re.search(r"inference: reloaded .*: 200", logs), logs[-3000:]
        # SIGHUP: a reload, and the container keeps running
        run(["docker", "kill", "-s", "HUP", f"{PROJECT}-inference-1"], env, check=True)
        deadline = time.monotonic() + 120
        while "SIGHUP reload: serving" not in run([*compose, "logs", "--no-color", "inference"], env).stdout:
            assert time.monotonic() < deadline, "no SIGHUP reload in the inference log"
            time.sleep(2)
        assert service_states(compose, env)["inference"]["State"] == "running"
        assert client.post("/v1/sentiment/predict", json={"texts": texts}, headers=auth).status_code == 200

        # Prometheus scraped the inference service, and the training progress while the jobs ran
        prom = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=30)
        deadline = time.monotonic() + 120
        while True:
            up_series = prometheus_query(prom, 'up{job="inference"}')
            if up_series and up_series[0]["value"][1] == "1":
                break
            assert time.monotonic() < deadline, f"Prometheus has no up{{job=\"inference\"}} == 1: {up_series}"
            time.sleep(3)
        assert prometheus_query(prom, 'fedtune_items_predicted_total{job="inference"}') or \
            prometheus_query(prom, 'fedtune_model_info{job="inference"}')
        trained = prometheus_query(prom, 'last_over_time(fedtune_training_state{job="training"}[1h])')
        assert {s["metric"]["kind"] for s in trained} >= {"fitness"}, trained
        print(f"\nREADME deployment: engine + images + up to serving {t_up:.0f} s")
        ok = True
    finally:
        if env is None and Path("/var/tmp/fedtune-docker/docker.sock").exists():
            env = engine_env(user_env)
        if env is not None:
            if not ok:
                print(log.read_text()[-6000:])
                print(run([*compose, "ps", "-a"], env).stdout)
                print(run([*compose, "logs", "--no-color", "--tail", "60"], env).stdout[-20000:])
            run([*compose, "down", "-v", "--remove-orphans", "-t", "10"], env, timeout=300)
        with contextlib.suppress(subprocess.TimeoutExpired):
            up.wait(60)
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        if env is not None:
            run(["bash", "scripts/docker-engine.sh", "stop"], env, timeout=120)
