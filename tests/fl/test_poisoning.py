"""Bad updates over a real federation: real site processes send a NaN update, a false row count or a scaled
update (FEDTUNE_TEST_TAMPER, read only by the site script, per job name: see TAMPERING in conftest.py); the
server drops or outvotes them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedtune.bundle import load_bundle
from fedtune.fl.export import export_bundle
from fedtune.fl.submit import JobFailed, find_fedtune_dir

pytestmark = pytest.mark.slow


def test_nan_update_and_false_count_are_dropped_and_named(tampering_federation, tmp_path, make_job,
                                                          tiny_antibody_trunk):
    fed = tampering_federation      # in jobs named poison*: site-2 sends n_train=1e12, site-3 a NaN update
    log = fed.workdir / "logs" / "server.log"
    log_start = len(log.read_text())
    result = fed.run(make_job("fitness", tiny_antibody_trunk, rounds=2, min_sites=1, name="poison"), timeout=600)
    # the same k-of-n rule as for missing sites: with min_sites=2 one usable answer cannot close a round
    with pytest.raises(JobFailed) as failed:
        fed.run(make_job("fitness", tiny_antibody_trunk, rounds=1, min_sites=2, name="poison-k"), timeout=600)
    server_log = log.read_text()[log_start:]          # what the server logged for these two jobs
    k_summary = json.loads((find_fedtune_dir(failed.value.result) / "summary.json").read_text())
    assert k_summary["status"] == "failed" and "1 usable answer" in k_summary["error"]
    assert sorted(k_summary["rejected"]["1"]) == ["site-2", "site-3"] and k_summary["last_round"] == 0
    with pytest.raises(ValueError, match="before its first round completed"):
        export_bundle(failed.value.result, tmp_path / "no-bundle")
    assert not (tmp_path / "no-bundle").exists()
    out = find_fedtune_dir(result)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    for rnd in ("1", "2"):
        rejected = summary["rejected"][rnd]
        assert sorted(rejected) == ["site-2", "site-3"]
        assert "n_train" in rejected["site-2"] and "exceeds" in rejected["site-2"]
        assert "non-finite" in rejected["site-3"]
    assert [sorted(r["sites"]) for r in summary["rounds"]] == [["site-1"], ["site-1"]]
    assert "dropped the answer of site-3" in server_log
    state = load_file(str(out / "global.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    bundle = load_bundle(export_bundle(result, tmp_path / "bundle"))
    assert "data_digests" not in bundle.manifest["provenance"]


def test_median_outvotes_a_scaled_update_fedavg_follows_it(tampering_federation, make_job, tiny_antibody_trunk):
    fed = tampering_federation      # in jobs named scaled-*: site-3 sends its change times -40
    globals_, honest = {}, {}
    for agg in ("fedavg", "median"):
        job_ids = []
        result = fed.run(make_job("fitness", tiny_antibody_trunk, rounds=1, aggregator=agg, name=f"scaled-{agg}",
                                  train={"batch_size": 16, "progress": False, "head_lr": 5e-3, "lr": 1e-3,
                                         "dropout": 0.0}),
                         timeout=600, on_submit=job_ids.append)
        globals_[agg] = load_file(str(find_fedtune_dir(result) / "global.safetensors"))
        honest[agg] = [load_file(str(p)) for p in
                       sorted(fed.workdir.rglob(f"fedtune-runs/{job_ids[0]}/site-[12]/update-round-1.safetensors"))]
    for agg in ("fedavg", "median"):
        assert len(honest[agg]) == 2
    keys = [k for k in honest["median"][0] if k.startswith("trunk.")]

    def distance(agg: str) -> tuple[float, float]:
        """(distance of the global trunk to the mean of the two honest updates, distance between them)."""
        h1, h2 = honest[agg]
        d = sum(float((globals_[agg][k] - (h1[k] + h2[k]) / 2).norm() ** 2) for k in keys) ** 0.5
        spread = sum(float((h1[k] - h2[k]).norm() ** 2) for k in keys) ** 0.5
        return d, spread

    d_median, spread_median = distance("median")
    d_fedavg, spread_fedavg = distance("fedavg")
    # per coordinate the median of two honest values and one outlier lies between the honest two
    assert d_median <= spread_median / 2 + 1e-4
    assert d_fedavg > 5 * spread_fedavg
