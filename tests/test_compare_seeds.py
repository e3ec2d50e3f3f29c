"""`fedtune compare --seeds`: every run repeated over split seeds, one report per seed plus the mean and spread
over seeds (issue 13: numbers quoted with n and a spread, not one lucky split)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedtune.report import seed_summary, write_seeds_report

FEDTUNE = [sys.executable, "-m", "fedtune"]


def _results(acc: dict[str, list[float | None]]) -> dict:
    """A comparison's results with the given per-site test accuracies per run."""
    return {"kind": "sentiment", "sites": ["site-1", "site-2"],
            "runs": {run: {f"site-{i + 1}": {"accuracy": a, "macro_f1": None if a is None else a / 2}
                           for i, a in enumerate(vals)} for run, vals in acc.items()}}


def test_seed_summary_is_the_mean_and_spread_of_the_per_seed_means_over_sites(tmp_path):
    per_seed = {0: _results({"local": [0.5, 0.7], "fedavg": [0.8, 0.9]}),
                3: _results({"local": [0.4, 0.6], "fedavg": [0.7, None]})}
    summ = seed_summary(per_seed)
    assert summ["local"]["accuracy"]["values"] == {0: pytest.approx(0.6), 3: pytest.approx(0.5)}
    assert summ["fedavg"]["accuracy"]["values"] == {0: pytest.approx(0.85), 3: pytest.approx(0.7)}  # None skipped
    assert summ["local"]["accuracy"]["mean"] == pytest.approx(0.55)
    assert summ["local"]["accuracy"]["sd"] == pytest.approx(np.std([0.6, 0.5], ddof=1))
    assert (summ["fedavg"]["accuracy"]["min"], summ["fedavg"]["accuracy"]["max"]) == pytest.approx((0.7, 0.85))
    assert summ["local"]["accuracy"]["seeds"] == 2
    report = write_seeds_report(per_seed, tmp_path).read_text()
    assert "over 2 split seeds (0, 3)" in report and "0.550 ± 0.071 [0.500, 0.600] (n=2)" in report
    assert "[seed 3](seed-3/report.md)" in report and (tmp_path / "seeds.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["seeds"]) == {"0", "3"} and saved["summary"]["local"]["accuracy"]["mean"] == pytest.approx(0.55)


def test_one_seed_has_no_spread(tmp_path):
    summ = seed_summary({1: _results({"local": [0.5, 0.7]})})
    assert summ["local"]["accuracy"]["sd"] is None and summ["local"]["accuracy"]["mean"] == pytest.approx(0.6)


@pytest.mark.parametrize("seeds, message", [("0,x", "comma-separated integers"), ("1,1", "distinct")])
def test_bad_seeds_are_refused_before_anything_runs(tmp_path, seeds, message):
    for i in (1, 2):
        (tmp_path / "data" / f"site-{i}").mkdir(parents=True)
    proc = subprocess.run([*FEDTUNE, "compare", "sentiment", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "out"), "--seeds", seeds], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "out").exists()                  # no federation was started, nothing written


@pytest.mark.slow
def test_compare_over_two_seeds(tmp_path, tiny_text_trunk):
    subprocess.run([*FEDTUNE, "prepare-data", "sentiment", "--out", str(tmp_path / "data"), "--sites", "2",
                    "--samples", "80"], check=True, capture_output=True)
    out = tmp_path / "report"
    proc = subprocess.run([*FEDTUNE, "compare", "sentiment", "--data", str(tmp_path / "data"), "--out", str(out),
                           "--trunk", str(tiny_text_trunk), "--trunk-mode", "frozen", "--rounds", "1",
                           "--local-epochs", "1", "--max-length", "32", "--seeds", "0,1", "--personalise", "2"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    per_seed = {s: json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)}
    for s, results in per_seed.items():
        assert list(results["runs"]) == ["local", "fedavg", "fedavg-personalised", "pooled"]
        assert f"(seed {s})" in results["notes"][0]
        assert (out / f"seed-{s}" / "report.md").exists()
    # a seed re-splits the sites: other sentences are held out for test, and every run scored them
    for site in ("site-1", "site-2"):
        tests = [per_seed[s]["splits"][site]["test"] for s in (0, 1)]
        assert tests[0]["units"] != tests[1]["units"]
        for s in (0, 1):
            assert per_seed[s]["splits"][site]["seed"] == s
            for run in ("local", "fedavg", "fedavg-personalised", "pooled"):
                assert per_seed[s]["runs"][run][site]["bootstrap"]["n"] == len(per_seed[s]["splits"][site]["test"]["units"])
    # the cross-site matrix: each site's final model on every site's test split; its diagonal is the score the
    # site itself reported (local: in process; FedAvg: scored at the site in the final phase)
    for s, results in per_seed.items():
        for run in ("local", "fedavg", "fedavg-personalised"):
            m = results["cross_site"][run]
            assert set(m) == {"site-1", "site-2"} and all(set(row) == {"site-1", "site-2"} for row in m.values())
            for site in ("site-1", "site-2"):
                assert m[site][site] == pytest.approx(results["runs"][run][site]["accuracy"], abs=1e-6)
        assert (out / f"seed-{s}" / "cross_site.png").stat().st_size > 0
        assert "## Cross-site" in (out / f"seed-{s}" / "report.md").read_text()
    overall = json.loads((out / "results.json").read_text())
    assert "FedAvg personalised" in (out / "seed-0" / "report.md").read_text()
    for run in ("local", "fedavg", "fedavg-personalised", "pooled"):
        means = [np.mean([per_seed[s]["runs"][run][site]["accuracy"] for site in ("site-1", "site-2")]) for s in (0, 1)]
        assert overall["summary"][run]["accuracy"]["mean"] == pytest.approx(np.mean(means))
        assert overall["summary"][run]["accuracy"]["seeds"] == 2
    assert "over 2 split seeds (0, 1)" in (out / "report.md").read_text()


def test_global_and_local_round_curves_from_a_summary():
    from fedtune.compare import global_curves, local_round_curves

    summary = {"rounds": [{"sites": {"a": {"accuracy": 0.6, "received": {"accuracy": 0.3}},
                                     "b": {"accuracy": 0.7, "received": {"accuracy": 0.3}}}},
                          {"sites": {"a": {"accuracy": 0.8, "received": {"accuracy": 0.65}}}},   # b missed round 2
                          {"sites": {"a": {"accuracy": 0.9, "received": {"accuracy": 0.75}},
                                     "b": {"accuracy": 0.85, "received": {"accuracy": 0.7}}}}],
               "sites": {"a": {"final_val": {"accuracy": 0.8}}, "b": {"final_val": {"accuracy": 0.72}}}}
    # the global model after round r is what round r + 1 received; after the last round, the final phase's score
    assert global_curves(summary, "accuracy") == {"a": [0.65, 0.75, 0.8], "b": [None, 0.7, 0.72]}
    assert local_round_curves(summary, "accuracy") == {"a": [0.6, 0.8, 0.9], "b": [0.7, None, 0.85]}


def test_cross_site_section_and_heatmap(tmp_path):
    from fedtune.report import write_report

    results = _results({"local": [0.5, 0.7], "fedavg": [0.8, 0.9]})
    results["cross_site"] = {"local": {"site-1": {"site-1": 0.5, "site-2": 0.25}, "site-2": {"site-1": 0.4, "site-2": 0.7}},
                             "fedavg": {"site-1": {"site-1": 0.8, "site-2": None}}}
    report = write_report(results, tmp_path).read_text()
    assert "## Cross-site" in report and "| site-1 | 0.500 | 0.250 |" in report and "| site-1 | 0.800 | – |" in report
    assert "![cross_site.png](cross_site.png)" in report and (tmp_path / "cross_site.png").stat().st_size > 0
