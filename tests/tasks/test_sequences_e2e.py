"""The `sequences` kind end to end through the CLI, on the example card + CSV (examples/own-sequences):
prepare-data over sites, train-local, and compare (local vs FedAvg over a real NVFlare federation on loopback,
mTLS, vs pooled) with its report; tiny random trunks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        tiny_antibody_trunk, "--rounds", "2", "--local-epochs", "2", "--max-length", "64")
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
