"""FedAvg beats local training on a skewed synthetic split with a learnable signal (issue 13): few rows per site of
a linear signal, so a site alone cannot fit it and the federation can. Through `fedtune compare` on a tiny
frozen trunk, with the exact federated ridge heads (`--head-type ridge`), which also brings the ridge baselines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow
FEDTUNE = [sys.executable, "-m", "fedtune"]


def _mean(per_site: dict) -> float:
    return float(np.mean([m["mean_pearson"] for m in per_site.values() if m.get("mean_pearson") is not None]))


def test_fedavg_ridge_beats_local_on_a_skewed_split(tmp_path, tiny_antibody_trunk):
    subprocess.run([*FEDTUNE, "prepare-data", "fitness", "--out", str(tmp_path / "data"), "--sites", "3",
                    "--samples", "150", "--alpha", "0.3"], check=True, capture_output=True)
    proc = subprocess.run([*FEDTUNE, "compare", "fitness", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "report"), "--trunk", str(tiny_antibody_trunk), "--trunk-mode", "frozen",
                           "--heads", "shared", "--head-type", "ridge", "--rounds", "1", "--local-epochs", "2",
                           "--max-length", "160"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    runs = results["runs"]
    assert list(runs) == ["local", "fedavg-ridge", "pooled", "local-ridge", "pooled-ridge"]
    fed = _mean(runs["fedavg-ridge"])
    # the federation learns the signal; each site alone, MLP or ridge, does worse on its own test split
    assert fed > _mean(runs["local"]) + 0.1 and fed > _mean(runs["local-ridge"]) + 0.1
    assert fed > 0.5
    # federated ridge is the pooled ridge (up to what the minimum-count rule keeps on site)
    assert fed == pytest.approx(_mean(runs["pooled-ridge"]), abs=0.05)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "FedAvg, ridge heads" in report and "pooled, ridge heads" in report
    # every run's mean over sites has its interval, the federated one included (the sites keep their bootstrap
    # replicates; compare rescores each site's final model and takes them where the numbers agree)
    for title in ("local only", "FedAvg, ridge heads", "pooled (upper bound)"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {title} | mean over sites |"))
        assert row.count("[") == row.count("]") >= 1 and "–" not in row, row
