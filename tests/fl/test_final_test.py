"""The federated job scores each site's test split once, in the final phase, and the summary carries it."""

from __future__ import annotations

import json

import pytest

from fedtune.data.split import TEST_FRACTION
from fedtune.fl.submit import find_fedtune_dir
from fedtune.tasks import get

pytestmark = pytest.mark.slow


def test_summary_carries_each_sites_final_test_with_n_and_interval(federation, make_job, tiny_text_trunk):
    result = federation.run(make_job("sentiment", tiny_text_trunk, name="sent-test"), timeout=600)
    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    job = json.loads((find_fedtune_dir(result) / "job.json").read_text())
    for site, folder in federation.site_data.items():
        split = get("sentiment").load_split(folder, seed=job["seed"], val_fraction=job["val_fraction"],
                                            test_fraction=TEST_FRACTION)
        s = summary["sites"][site]
        assert s["n_test"] == len(split.test) > 0 and s["n_val"] == len(split.val)
        assert 0.0 <= s["final_test"]["accuracy"] <= 1.0
        boot = s["final_test"]["bootstrap"]
        assert boot["n"] == len(set(split.test.split_ids()))
        ci = boot["ci"]["accuracy"]
        assert 0.0 <= ci["lo"] <= ci["hi"] <= 1.0
        assert "replicates" not in boot            # the reply carries n and intervals, no per-row data
