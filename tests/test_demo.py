"""`fedtune demo` end to end on tiny trunks: data, real NVFlare federation (mTLS loopback), both jobs,
reports, bundles, then `fedtune serve` as a real process answering the sample predictions."""

from __future__ import annotations

import json

import pytest

from fedtune.demo import DemoSettings, run_demo
from fedtune.fl.federation import free_port

pytestmark = pytest.mark.slow


def test_demo_end_to_end_on_tiny_trunks(tmp_path, tiny_antibody_trunk, tiny_text_trunk):
    # two sites, one local epoch: the demo's path end to end (its three-site default only adds site processes)
    settings = DemoSettings(sites=2, fitness_samples=120, sentiment_samples=120, fitness_rounds=2,
                            fitness_local_epochs=1, sentiment_rounds=2, fitness_trunk=str(tiny_antibody_trunk),
                            sentiment_trunk=str(tiny_text_trunk), port=free_port())
    summary = run_demo(tmp_path / "demo", settings)
    for kind in ("fitness", "sentiment"):
        report = (tmp_path / "demo" / "reports" / kind / "report.md").read_text()
        assert "local only" in report and "FedAvg" in report and "pooled" in report
        assert (tmp_path / "demo" / "reports" / kind / "bars.png").stat().st_size > 1000
        assert (tmp_path / "demo" / "bundles" / kind / "manifest.json").exists()
        assert set(summary["results"][kind]) == {"local", f"fedavg-{'shared' if kind == 'fitness' else 'lora'}",
                                                 "pooled"}
    fitness = summary["predictions"]["global"]
    assert [p["id"] for p in fitness["predictions"]] == ["trastuzumab", "pembrolizumab"]
    assert set(fitness["predictions"][0]["scores"]) == {"aggregation", "binding", "expression", "immunogenicity",
                                                        "polyreactivity", "thermostability"}
    sentiment = summary["predictions"]["sentiment"]["predictions"]
    assert len(sentiment) == 3 and all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in sentiment)
    saved = json.loads((tmp_path / "demo" / "demo-summary.json").read_text())
    assert saved["bundles"]["fitness"].endswith("bundles/fitness")
