"""Ridge heads (head types ridge and ridge-mlp) in a bundle: the manifest records the head type, the loader
rebuilds the right heads, and the service over uvicorn answers with the ridge solution itself."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from fedtune.bundle import BundleError, load_bundle, save_bundle
from fedtune.data import AssayStats, synthetic_fitness
from fedtune.models import TrunkConfig
from fedtune.serve.server import BackgroundServer
from fedtune.tasks import get
from fedtune.train import Trainer, ridge
from serve_helpers import antibodies, settings


@pytest.fixture(scope="module", params=["ridge", "ridge-mlp"])
def ridge_bundle(request, tmp_path_factory, tiny_antibody_trunk):
    """A bundle whose heads hold a ridge solved on synthetic data: (bundle folder, W [assays, dim + 1])."""
    task = get("fitness")
    data = synthetic_fitness(60, seed=7)
    cfg = TrunkConfig(str(tiny_antibody_trunk), mode="frozen")
    torch.manual_seed(7)
    model = task.build_model(cfg, data.assays, head_type=request.param).eval()
    stats = AssayStats.fit(data)
    trainer = Trainer(model, task.train_config("frozen"), stats)
    train, val = data.subset(np.arange(45)), data.subset(np.arange(45, 60))
    xy = [(trainer.embeddings(d), task.targets(d, np.arange(len(d)), stats)) for d in (train, val)]
    w, _ = ridge.fit(*xy[0], *xy[1])
    task.set_linear_outputs(model, torch.from_numpy(w[:, :-1]), torch.from_numpy(w[:, -1]))
    out = save_bundle(tmp_path_factory.mktemp("ridge") / "bundle", model, trunk_cfg=cfg, stats=stats)
    return out, w


def test_ridge_heads_are_served_as_the_ridge_solution(ridge_bundle):
    path, w = ridge_bundle
    bundle = load_bundle(path)
    head_type = bundle.manifest["heads"]["type"]
    assert head_type in ("ridge", "ridge-mlp") and bundle.model.head_type == head_type
    abs_ = antibodies(3, seed=1)
    emb = bundle.model.embed([a["heavy"] for a in abs_], [a["light"] for a in abs_]).detach().double().numpy()
    z = ridge.augment(emb) @ w.T                     # the ridge's oriented z per antibody and assay
    with BackgroundServer(settings([path])) as srv:
        resp = httpx.post(f"{srv.url}/v1/fitness/predict", json={"antibodies": abs_}, timeout=60)
    assert resp.status_code == 200, resp.text
    assays = bundle.model.assays
    for i, pred in enumerate(resp.json()["predictions"]):
        for t, score in pred["scores"].items():
            cols = [j for j, a in enumerate(assays) if a.task == t]
            assert score == pytest.approx(float(z[i, cols].mean()), abs=1e-4)


def test_an_unknown_head_type_is_refused(ridge_bundle, tmp_path):
    import shutil

    path, _ = ridge_bundle
    copy = tmp_path / "bad"
    shutil.copytree(path.resolve(), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["heads"]["type"] = "forest"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="forest"):
        load_bundle(copy)
