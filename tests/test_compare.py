"""`fedtune compare` through the CLI: sentiment in two trunk modes side by side (bytes per round, accuracy).

Two modes are enough for the multi-mode table; what each of the four modes sends is ordered in
tests/models/test_travel.py, and here the federation's bytes per round must equal it. The
other modes' federated jobs run in tests/fl (full: test_jobs.py; lora: test_lora_ffa_job.py, test_ddp.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedtune.fl.config import JobConfig
from fedtune.fl.submit import find_fedtune_dir
from fedtune.models import travelling_keys

pytestmark = pytest.mark.slow


def test_compare_two_trunk_modes(tmp_path, tiny_text_trunk):
    fedtune = [sys.executable, "-m", "fedtune"]
    subprocess.run([*fedtune, "prepare-data", "sentiment", "--out", str(tmp_path / "data"), "--sites", "2",
                    "--samples", "80"], check=True, capture_output=True)
    proc = subprocess.run([*fedtune, "compare", "sentiment", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "report"), "--trunk", str(tiny_text_trunk), "--rounds", "2",
                           "--local-epochs", "1", "--max-length", "48",
                           *[a for m in ("ptuning", "frozen") for a in ("--trunk-mode", m)]],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    runs = ["local", "fedavg-ptuning", "fedavg-frozen", "pooled"]
    assert list(results["runs"]) == runs
    bytes_ = {r: results["costs"][r]["bytes_per_round"] for r in runs[1:-1]}
    # what travels: ptuning = prompt encoder + head; frozen = head only; each exactly the job's model's
    # travelling tensors (the order of all four modes: tests/models/test_travel.py)
    assert bytes_["fedavg-ptuning"] > bytes_["fedavg-frozen"] > 0
    for run in runs[1:-1]:
        job_json = find_fedtune_dir(Path(results["results"][run])) / "job.json"
        job = JobConfig.from_dict(json.loads(job_json.read_text()))
        assert job.trunk["mode"] == run.removeprefix("fedavg-")
        state = (model := job.build_model()).state_dict()
        keys = travelling_keys(model, private_heads=job.private)
        assert bytes_[run] == sum(state[k].numel() * state[k].element_size() for k in keys)
    for run in runs:
        for site in ("site-1", "site-2"):
            assert 0.0 <= results["runs"][run][site]["accuracy"] <= 1.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "FedAvg ptuning" in report and "FedAvg frozen" in report and "bytes sent per site per round" in report
    assert (tmp_path / "report" / "rounds.png").exists()
    assert any((tmp_path / "report" / "tb").rglob("events.out.tfevents.*"))
