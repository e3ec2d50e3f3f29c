"""Local and pooled baselines on the sites' test splits, and the report quoting them with n and an interval."""

from __future__ import annotations

import json

from fedtune.compare import load_sites, run_local, run_pooled
from fedtune.data.split import TEST_FRACTION
from fedtune.models import TrunkConfig
from fedtune.report import write_report
from fedtune.tasks import get
from fedtune.train import TrainConfig


def test_baselines_score_the_test_splits_and_the_report_says_n_and_interval(tiny_text_trunk, tmp_path):
    task = get("sentiment")
    dirs = {}
    for i, site in enumerate(("site-1", "site-2")):
        task.write(task.synthetic(60, seed=10 + i), tmp_path / site)
        dirs[site] = tmp_path / site
    sites = load_sites("sentiment", dirs, seed=0, val_fraction=0.2)
    for site, split in sites.items():      # the split every run uses: the site's own, as its client makes it
        again = task.load_split(dirs[site], seed=0, val_fraction=0.2, test_fraction=TEST_FRACTION)
        assert split.record() == again.record() and len(split.test) > 0
    trunk = TrunkConfig(str(tiny_text_trunk), mode="frozen")
    cfg = TrainConfig(epochs=3, progress=False, device="cpu")
    local = run_local("sentiment", sites, trunk, cfg)
    pooled = run_pooled("sentiment", sites, trunk, cfg)
    for run in (local, pooled):
        assert sorted(run["test"]) == sorted(run["val"]) == ["site-1", "site-2"]
        for site, m in run["test"].items():
            assert m["bootstrap"]["n"] == len(set(sites[site].test.split_ids()))
            assert 0.0 <= m["accuracy"] <= 1.0
    results = {"kind": "sentiment", "sites": sorted(dirs), "runs": {"local": local["test"], "pooled": pooled["test"]},
               "val_runs": {"local": local["val"], "pooled": pooled["val"]}, "notes": ["test"]}
    report = write_report(results, tmp_path / "report").read_text()
    assert "## Test split" in report
    ci = local["test"]["site-1"]["bootstrap"]["ci"]["accuracy"]
    n1 = local["test"]["site-1"]["bootstrap"]["n"]
    acc = local["test"]["site-1"]["accuracy"]
    assert f"| local only | site-1 | {n1} | {acc:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]" in report
    n_all = n1 + local["test"]["site-2"]["bootstrap"]["n"]
    mean_row = next(line for line in report.splitlines() if line.startswith("| local only | mean over sites |"))
    assert f"| {n_all} |" in mean_row and "[" in mean_row            # the mean's interval, from the replicates
    assert json.loads((tmp_path / "report" / "results.json").read_text())["runs"]["pooled"]
