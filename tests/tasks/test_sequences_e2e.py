"""The `sequences` kind end to end through the CLI, on the example card + CSV (examples/own-sequences):
prepare-data over sites, train-local, and compare (local vs FedAvg over a real NVFlare federation on loopback,
mTLS, vs pooled) with its report, then `fedtune export` and `fedtune serve` (a real uvicorn server) answering
/v1/sequences/predict and /v2/models/sequences/infer; a text classification card served from a local run.
Tiny random trunks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own-sequences"
FEDTUNE = [sys.executable, "-m", "fedtune"]


def run(*args, timeout: float = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FEDTUNE, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_prepare_data_and_train_local(tmp_path, tiny_antibody_trunk):
    out = run("prepare-data", "sequences", "--source", EXAMPLE, "--out", tmp_path / "data", "--sites", "2",
              "--split", "skew", "--alpha", "2")
    split = json.loads((tmp_path / "data" / "sequences-split.json").read_text())
    assert sum(s["samples"] for s in split["sites"].values()) == 150 and "site-2" in out.stdout
    for site in ("site-1", "site-2"):
        assert (tmp_path / "data" / site / "task.json").read_text() == (EXAMPLE / "task.json").read_text()
    proc = run("train-local", "sequences", "--data", tmp_path / "data" / "site-1", "--out", tmp_path / "local",
               "--trunk", tiny_antibody_trunk, "--epochs", "3", "--device", "cpu", "--no-export")
    assert "mean Pearson" in proc.stdout and "test, scored once" in proc.stdout
    metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert metrics["kind"] == "sequences" and set(metrics["final_val"]["labels"]) == {"tm", "viscosity"}
    assert metrics["final_test"]["bootstrap"]["n"] > 0 and "score" in metrics["final_test"]["bootstrap"]["ci"]


def test_compare_local_fedavg_pooled_over_a_real_federation(tmp_path, tiny_antibody_trunk):
    run("prepare-data", "sequences", "--source", EXAMPLE, "--out", tmp_path / "data", "--sites", "2")
    run("compare", "sequences", "--data", tmp_path / "data", "--out", tmp_path / "report", "--trunk",
        tiny_antibody_trunk, "--rounds", "1", "--local-epochs", "1", "--max-length", "64")
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert list(results["runs"]) == ["local", "fedavg", "pooled"]
    for run_name, per_site in results["runs"].items():
        for site in ("site-1", "site-2"):
            m = per_site[site]
            assert set(m["labels"]) == {"tm", "viscosity"} and m["labels"]["tm"]["n"] > 0, (run_name, site)
            assert "score" in m and m["labels"]["viscosity"]["units"] == "cP"
    job = json.loads((Path(results["results"]["fedavg"]).rglob("job.json").__next__()).read_text())
    assert [c["name"] for c in job["assays"]] == ["heavy", "light", "tm", "viscosity"]   # the card travelled
    report = (tmp_path / "report" / "report.md").read_text()
    assert "# fedtune report: sequences" in report and "| tm |" in report and "FedAvg" in report
    assert (tmp_path / "report" / "bars.png").exists()

    run("export", "--result", results["results"]["fedavg"], "--out", tmp_path / "bundle")
    rows = [line.split(",") for line in (EXAMPLE / "data.csv").read_text().splitlines()[1:4]]
    with serving(tmp_path / "bundle") as url:
        body = {"items": [{"id": f"ab-{i}", "sequences": {"heavy": h.lower(), "light": f" {lt} "}}
                          for i, (h, lt, *_) in enumerate(rows)]}
        r = httpx.post(f"{url}/v1/sequences/predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["task"] == "regression" and out["columns"] == ["heavy", "light"] and out["heads"] == "global"
        first = out["predictions"][0]
        assert first["id"] == "ab-0" and set(first["values"]) == {"tm", "viscosity"}
        assert first["values"]["viscosity"]["units"] == "cP" and first["values"]["viscosity"]["favourable"] == "lower"
        v2 = {"inputs": [{"name": "heavy", "datatype": "BYTES", "shape": [3], "data": [r[0] for r in rows]},
                         {"name": "light", "datatype": "BYTES", "shape": [3], "data": [r[1] for r in rows]}]}
        r = httpx.post(f"{url}/v2/models/sequences/infer", json=v2, timeout=60)
        assert r.status_code == 200, r.text
        tensors = {o["name"]: o for o in r.json()["outputs"]}
        assert set(tensors) == {"tm", "viscosity"} and tensors["tm"]["shape"] == [3]
        assert tensors["tm"]["data"][0] == pytest.approx(first["values"]["tm"]["value"], rel=1e-4)
        # bad input: a clear 4xx naming the item and column, never a 5xx
        bad = {"items": [{"sequences": {"heavy": "EVQLXZ", "light": "DIQ"}}]}
        r = httpx.post(f"{url}/v1/sequences/predict", json=bad, timeout=60)
        assert r.status_code == 422 and "column 'heavy'" in r.text and "invalid residue" in r.text
        r = httpx.post(f"{url}/v1/sequences/predict", json={"items": [{"sequences": {"heavy": "EVQL"}}]}, timeout=60)
        assert r.status_code == 422 and "['heavy', 'light']" in r.text
        r = httpx.post(f"{url}/v2/models/sequences/infer", json={"inputs": [
            {"name": "heavy", "datatype": "BYTES", "shape": [1], "data": ["EVQL"]},
            {"name": "light", "datatype": "BYTES", "shape": [1], "data": ["DIQ1"]}]}, timeout=60)
        assert r.status_code == 422 and "column 'light'" in r.text
        r = httpx.post(f"{url}/v2/models/sequences/infer", json={"inputs": [
            {"name": "heavy", "datatype": "BYTES", "shape": [1], "data": ["EVQL"]}]}, timeout=60)
        assert r.status_code == 400 and "light" in r.text


def test_a_text_classification_card_is_served_from_a_local_run(tmp_path, tiny_text_trunk):
    from fedtune.tasks.sequences_data import SYNTHETIC_CLASSES, synthetic_sequences, write_table
    write_table(synthetic_sequences(80, 0, SYNTHETIC_CLASSES), tmp_path / "src")
    run("prepare-data", "sequences", "--source", tmp_path / "src", "--out", tmp_path / "data", "--sites", "2")
    proc = run("train-local", "sequences", "--data", tmp_path / "data" / "site-1", "--out", tmp_path / "local",
               "--trunk", tiny_text_trunk, "--epochs", "2", "--device", "cpu")
    assert "accuracy" in proc.stdout
    with serving(tmp_path / "local" / "bundle") as url:
        r = httpx.post(f"{url}/v1/sequences/predict", json={"items": [
            {"sequences": {"text": "batch 7 text rose in run 3"}}, {"id": "b", "sequences": {"text": "it fell"}}]},
            timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert r.json()["task"] == "classification" and [p["id"] for p in preds] == ["0", "b"]
        assert set(preds[0]["probabilities"]) == {"fail", "pass"} and preds[0]["label"] in ("fail", "pass")
        assert sum(preds[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        r = httpx.post(f"{url}/v2/models/sequences/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["it rose", "it fell"]}]}, timeout=60)
        assert r.status_code == 200, r.text
        tensors = {o["name"]: o for o in r.json()["outputs"]}
        assert tensors["label"]["shape"] == [2] and tensors["probabilities"]["shape"] == [2, 2]
        for bad in ({"text": "x" * 10_000}, {"text": "ok", "note": "y", "more": "z"}, {"text": "  "}, {"txt": "ok"}):
            r = httpx.post(f"{url}/v1/sequences/predict", json={"items": [{"sequences": bad}]}, timeout=60)
            assert r.status_code == 422 and r.json()["code"] == "invalid_sequence", (bad, r.text)
        r = httpx.get(f"{url}/v2/models/sequences", timeout=60)
        assert r.status_code == 200 and [i["name"] for i in r.json()["inputs"]] == ["text"]


class serving:
    """`fedtune serve --bundle B` as a process on a free loopback port, until the block ends."""

    def __init__(self, bundle: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.bundle = bundle

    def __enter__(self) -> str:
        env = {**os.environ, "FEDTUNE_DEVICE": "cpu", "FEDTUNE_LOG_LEVEL": "warning", "FEDTUNE_MAX_WAIT_MS": "1"}
        self.proc = subprocess.Popen([*FEDTUNE, "serve", "--bundle", str(self.bundle), "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"fedtune serve exited: {self.proc.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError("fedtune serve did not become ready")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
