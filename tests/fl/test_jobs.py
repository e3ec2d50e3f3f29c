"""Federated jobs end to end with real NVFlare over loopback: private vs shared heads, sentiment, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedtune.bundle import load_bundle
from fedtune.data import SENTIMENT_LABELS
from fedtune.fl.export import export_bundle
from fedtune.fl.submit import find_fedtune_dir
from fedtune.tasks import get
from fedtune.train.metrics import classification_metrics, regression_metrics

pytestmark = pytest.mark.slow


def site_models(federation, job_id: str) -> dict[str, dict[str, torch.Tensor]]:
    """The model every site holds after the job (saved by the site in its own workspace)."""
    found = {p.parent.name: load_file(str(p))
             for p in federation.workdir.rglob(f"fedtune-runs/{job_id}/*/final_model.safetensors")}
    assert sorted(found) == sorted(federation.site_data), found.keys()
    return found


def run(federation, job):
    job_ids = []
    result = federation.run(job, timeout=600, on_submit=job_ids.append)
    return job_ids[0], result


def trunk_and_heads(state):
    trunk = {k: v for k, v in state.items() if k.startswith("trunk.")}
    heads = {k: v for k, v in state.items() if k.startswith("heads.")}
    assert trunk and heads
    return trunk, heads


@pytest.mark.parametrize("heads", ["private", "shared"])
def test_fitness_job_trunks_match_global_heads_follow_mode(federation, make_job, tiny_antibody_trunk, heads, tmp_path):
    job_id, result = run(federation, make_job("fitness", tiny_antibody_trunk, heads=heads, name=f"fit-{heads}"))
    out = find_fedtune_dir(result)
    global_state = load_file(str(out / "global.safetensors"))
    sites = site_models(federation, job_id)
    g_trunk, g_heads = trunk_and_heads(global_state)
    per_site = {s: trunk_and_heads(st) for s, st in sites.items()}
    for site, (trunk, _) in per_site.items():
        for k, v in g_trunk.items():
            torch.testing.assert_close(trunk[k], v, msg=f"{site}: {k} differs from the global trunk")
    (h1, h2) = [h for _, h in per_site.values()]
    differ = [k for k in h1 if not torch.allclose(h1[k], h2[k])]
    if heads == "private":
        assert differ, "private heads should differ between sites"
        # what the server saw never contained a trained head: its global heads are the initial ones
        assert sorted(p.stem for p in (out / "site_heads").glob("*.safetensors")) == sorted(sites)
    else:
        assert not differ, f"shared heads should be equal at every site; differ: {differ[:3]}"
        for k, v in g_heads.items():
            torch.testing.assert_close(h1[k], v)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and not summary["missing"]
    # private heads travel less: only the trunk goes up
    assert summary["bytes_per_round"] > 0

    # the exported bundle reproduces every site's final validation metrics
    bundle = load_bundle(export_bundle(result, tmp_path / "bundle"))
    assert bundle.manifest["sites"] == sorted(sites) and bundle.has_global == (heads == "shared")
    assert sorted(bundle.sites) == (sorted(sites) if heads == "private" else [])
    job = json.loads((out / "job.json").read_text())
    for site, folder in federation.site_data.items():
        _, val = get("fitness").load_site(folder, seed=job["seed"], val_fraction=job["val_fraction"])
        head_set = site if heads == "private" else None
        z = bundle.predict(list(zip(val.heavy, val.light)), head_set)
        pred = np.concatenate([z[t] for t in bundle.model.tasks], axis=1)
        stats = bundle.stats[site if heads == "private" else "global"]
        got = regression_metrics(pred, val.labels, val.assays, stats)
        want = summary["sites"][site]["final_val"]
        assert got["mean_pearson"] == pytest.approx(want["mean_pearson"], abs=1e-4)
        for task, m in want["tasks"].items():
            for assay, a in m["assays"].items():
                if a["rmse"] is not None:
                    assert got["tasks"][task]["assays"][assay]["rmse"] == pytest.approx(a["rmse"], rel=1e-4)
    assert bundle.manifest["provenance"]["rounds"] == 2


def test_sentiment_job_reports_accuracy_per_site(federation, make_job, tiny_text_trunk, tmp_path):
    job_id, result = run(federation, make_job("sentiment", tiny_text_trunk, name="sent"))
    out = find_fedtune_dir(result)
    summary = json.loads((out / "summary.json").read_text())
    for site in federation.site_data:
        for rnd in summary["rounds"]:
            assert 0.0 <= rnd["sites"][site]["accuracy"] <= 1.0
        assert 0.0 <= summary["sites"][site]["final_val"]["accuracy"] <= 1.0
    bundle = load_bundle(export_bundle(result, tmp_path / "bundle"))
    for site, folder in federation.site_data.items():
        _, val = get("sentiment").load_site(folder, seed=0, val_fraction=0.2)
        got = classification_metrics(bundle.predict(val.texts), val.labels, SENTIMENT_LABELS)
        assert got["accuracy"] == pytest.approx(summary["sites"][site]["final_val"]["accuracy"], abs=1e-6)
