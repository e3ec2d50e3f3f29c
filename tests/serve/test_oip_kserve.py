"""/v2 against the KServe Python SDK's REST client (InferenceRESTClient, protocol v2) on a real uvicorn server.

kserve cannot live in fedtune's venv (its psutil, protobuf and python-dateutil caps conflict with our pins), so
scripts/test.sh builds a side venv, .venv-kserve, and this test runs tests/serve/kserve_client.py in it as a
subprocess, then compares what the client decoded with the plain JSON /v2 route's answers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import antibodies, texts

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
SCRIPT = Path(__file__).with_name("kserve_client.py")
ATOL = 1e-6

BUILD_WAIT_S = 1200     # scripts/test.sh builds .venv-kserve in the background while the suite runs


def _side_venv_or_skip() -> None:
    """Wait for a background build of .venv-kserve (scripts/test.sh) to finish; skip, saying why, without one."""
    venv = PYTHON.parents[1]
    building, failed = venv / ".building", venv / ".failed"
    deadline = time.monotonic() + BUILD_WAIT_S
    while building.exists():
        pid = building.read_text().strip()
        if pid and not Path(f"/proc/{pid}").exists() and building.exists():
            pytest.skip(f".venv-kserve: its builder (pid {pid}) died without finishing")
        if time.monotonic() > deadline:
            pytest.fail(f".venv-kserve still building after {BUILD_WAIT_S} s")
        time.sleep(2)
    if failed.exists():
        pytest.skip(".venv-kserve could not be built (kserve 0.21.0): " + failed.read_text()[-1500:])
    if not PYTHON.exists():
        pytest.skip(".venv-kserve does not exist: scripts/test.sh creates it (kserve cannot share fedtune's venv)")


def _reference(client, model: str, inputs: list[dict], **extra) -> dict:
    r = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


@pytest.fixture(scope="module")
def kserve(server) -> dict:
    _side_venv_or_skip()
    spec = {"url": server.url, "antibodies": antibodies(3, seed=7), "texts": texts(4)}
    proc = subprocess.run([str(PYTHON), str(SCRIPT)], input=json.dumps(spec), capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return {"spec": spec, **json.loads(proc.stdout)}


def test_health_and_model_ready(kserve):
    assert kserve["server_live"] is True and kserve["server_ready"] is True
    assert kserve["model_ready"] == {"fitness": True, "sentiment": True, "protein": False}


@pytest.mark.parametrize("kind", ["json", "binary", "mixed"])
def test_fitness_infer(kserve, client, kind):
    """mixed: heavy in JSON and light as binary tensor data in one request, with parameters={"site": "site-1"}."""
    abs_ = kserve["spec"]["antibodies"]
    extra = {"parameters": {"site": "site-1"}} if kind == "mixed" else {}
    expected = _reference(client, "fitness", [{"name": c, "shape": [len(abs_)], "datatype": "BYTES",
                                               "data": [a[c] for a in abs_]} for c in ("heavy", "light")], **extra)
    got = kserve["infer"][f"fitness-{kind}"]
    assert got["id"] == f"fit-{kind}" and got["model_name"] == "fitness"
    assert list(got["outputs"]) == list(expected)
    assert got["binary_body"] is (kind == "binary")
    for task, ref in expected.items():
        out = got["outputs"][task]
        assert out["datatype"] == "FP32" and out["shape"] == [3]
        np.testing.assert_allclose(out["data"], ref["data"], atol=ATOL)


@pytest.mark.parametrize("kind", ["json", "binary"])
def test_sentiment_infer(kserve, client, kind):
    ts = kserve["spec"]["texts"]
    expected = _reference(client, "sentiment", [{"name": "text", "shape": [4], "datatype": "BYTES", "data": ts}])
    got = kserve["infer"][f"sentiment-{kind}"]
    assert got["id"] == f"sent-{kind}" and got["model_name"] == "sentiment"
    labels, probs = got["outputs"]["label"], got["outputs"]["probabilities"]
    assert labels["datatype"] == "BYTES" and labels["shape"] == [4] and labels["data"] == expected["label"]["data"]
    assert probs["datatype"] == "FP32" and probs["shape"] == [4, 3]
    assert got["binary_body"] is (kind == "binary")
    np.testing.assert_allclose(probs["data"], expected["probabilities"]["data"], atol=ATOL)


def test_requested_output_in_binary(kserve, client):
    ts = kserve["spec"]["texts"]
    expected = _reference(client, "sentiment", [{"name": "text", "shape": [4], "datatype": "BYTES", "data": ts}])
    got = kserve["infer"]["sentiment-requested-output"]
    assert list(got["outputs"]) == ["probabilities"] and got["binary_body"] is True
    np.testing.assert_allclose(got["outputs"]["probabilities"]["data"], expected["probabilities"]["data"], atol=ATOL)


def test_unknown_model_is_a_404_the_client_raises(kserve):
    err = kserve["unknown_model"]
    assert err["raised"] is True and err["status"] == 404
    assert "protein" in err["message"]
