"""`fedtune compare --dp-epsilon` through the CLI and a real federation, with LoRA: the DP run trains and sends
the adapters (DP-SGD on adapters + heads), each site's epsilon is its accountant's figure, and the report has
the utility/epsilon table, its plot and the membership attack on both runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_compare_lora_with_dp_reports_epsilon_utility_and_the_attack(tmp_path, tiny_text_trunk):
    from safetensors.torch import load_file

    from fedtune.train.dp import accounted_epsilon
    fedtune = [sys.executable, "-m", "fedtune"]
    subprocess.run([*fedtune, "prepare-data", "sentiment", "--out", str(tmp_path / "data"), "--sites", "2",
                    "--samples", "80"], check=True, capture_output=True)
    proc = subprocess.run([*fedtune, "compare", "sentiment", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "report"), "--trunk", str(tiny_text_trunk), "--trunk-mode", "lora",
                           "--rounds", "1", "--local-epochs", "1", "--max-length", "32", "--no-baselines",
                           "--dp-epsilon", "4"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert list(results["runs"]) == ["fedavg", "fedavg-dp4"]
    # the same adapters + heads travel with and without DP
    costs = results["costs"]
    assert costs["fedavg-dp4"]["bytes_per_round"] == costs["fedavg"]["bytes_per_round"] > 0
    dp_round = next(Path(results["results"]["fedavg-dp4"]).rglob("round-1.safetensors"))
    lora_b = {k: v for k, v in load_file(str(dp_round)).items() if ".lora_B." in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())     # peft starts B at 0: DP-SGD moved it
    privacy = results["privacy"]["fedavg-dp4"]
    assert privacy["dp"]["epsilon"] == 4.0 and set(privacy["sites"]) == {"site-1", "site-2"}
    for site, dp in privacy["sites"].items():
        assert 0 < dp["steps"] and 0 < dp["epsilon"] <= 4.0
        assert dp["epsilon"] == pytest.approx(accounted_epsilon(dp["noise_multiplier"], dp["sample_rate"],
                                                                dp["steps"], dp["delta"]), rel=1e-9)
        assert 0.0 <= results["runs"]["fedavg-dp4"][site]["accuracy"] <= 1.0
    for run in ("fedavg", "fedavg-dp4"):
        assert 0.0 <= results["privacy"][run]["membership"]["auc"] <= 1.0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Differential privacy" in report and "| fedavg-dp4 | 4 |" in report and "| fedavg | no DP |" in report
    assert (tmp_path / "report" / "privacy.png").stat().st_size > 1000
