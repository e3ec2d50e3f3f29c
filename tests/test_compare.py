"""`fedtune compare` through the CLI: sentiment in every trunk mode side by side (bytes per round, accuracy)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_compare_every_trunk_mode(tmp_path, tiny_text_trunk):
    fedtune = [sys.executable, "-m", "fedtune"]
    subprocess.run([*fedtune, "prepare-data", "sentiment", "--out", str(tmp_path / "data"), "--sites", "2",
                    "--samples", "80"], check=True, capture_output=True)
    proc = subprocess.run([*fedtune, "compare", "sentiment", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "report"), "--trunk", str(tiny_text_trunk), "--rounds", "2",
                           "--local-epochs", "1", "--max-length", "48",
                           *[a for m in ("full", "lora", "ptuning", "frozen") for a in ("--trunk-mode", m)]],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    runs = ["local", "fedavg-full", "fedavg-lora", "fedavg-ptuning", "fedavg-frozen", "pooled"]
    assert list(results["runs"]) == runs
    bytes_ = {r: results["costs"][r]["bytes_per_round"] for r in runs[1:-1]}
    # what travels: full = whole trunk + head; lora = adapters + head; ptuning = prompt encoder + head;
    # frozen = head only
    assert bytes_["fedavg-full"] > bytes_["fedavg-lora"] > bytes_["fedavg-frozen"]
    assert bytes_["fedavg-full"] > bytes_["fedavg-ptuning"] > bytes_["fedavg-frozen"]
    for run in runs:
        for site in ("site-1", "site-2"):
            assert 0.0 <= results["runs"][run][site]["accuracy"] <= 1.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "FedAvg ptuning" in report and "bytes sent per site per round" in report
    assert (tmp_path / "report" / "rounds.png").exists()
    assert any((tmp_path / "report" / "tb").rglob("events.out.tfevents.*"))
