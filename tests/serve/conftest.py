"""Bundles built on the tiny trunks and real uvicorn servers on loopback ports for the service tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from fedtune.bundle import save_bundle
from fedtune.data import AssayStats, synthetic_fitness
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.serve.server import BackgroundServer
from serve_helpers import settings


def _fitness_model(trunk: Path, seed: int):
    torch.manual_seed(seed)
    data = synthetic_fitness(40, seed=seed)
    cfg = TrunkConfig(str(trunk), mode="full")
    return build_model("fitness", cfg, data.assays).eval(), cfg, data


def _random_heads(model, seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in model.new_heads().state_dict().items()}


@pytest.fixture(scope="session")
def serve_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def sites_bundle(serve_dir, tiny_antibody_trunk) -> Path:
    """Fitness, private heads only: site-1 and site-2 with their own heads and statistics, no global heads."""
    model, cfg, data = _fitness_model(tiny_antibody_trunk, 1)
    stats1 = AssayStats.fit(data.subset(np.arange(0, 20)))
    stats2 = AssayStats.fit(data.subset(np.arange(20, 40)))
    return save_bundle(serve_dir / "fitness-sites", model, trunk_cfg=cfg, stats=stats1, include_global=False,
                       site_heads={"site-1": _random_heads(model, 11), "site-2": _random_heads(model, 12)},
                       site_stats={"site-1": stats1, "site-2": stats2}, heads_mode="private",
                       sites=["site-1", "site-2"], metrics={"site-1": {"mean_pearson": 0.4}},
                       provenance={"how": "test"})


def _global_bundle(out: Path, trunk: Path, seed: int) -> Path:
    model, cfg, data = _fitness_model(trunk, seed)
    return save_bundle(out, model, trunk_cfg=cfg, stats=AssayStats.fit(data), provenance={"seed": seed})


@pytest.fixture(scope="session")
def global_bundle_a(serve_dir, tiny_antibody_trunk) -> Path:
    return _global_bundle(serve_dir / "fitness-a", tiny_antibody_trunk, 2)


@pytest.fixture(scope="session")
def global_bundle_b(serve_dir, tiny_antibody_trunk) -> Path:
    return _global_bundle(serve_dir / "fitness-b", tiny_antibody_trunk, 3)


@pytest.fixture(scope="session")
def corrupt_bundle(serve_dir, global_bundle_b) -> Path:
    path = serve_dir / "fitness-corrupt"
    shutil.copytree(global_bundle_b, path)
    f = path / "trunk" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="session")
def sentiment_bundle(serve_dir, tiny_text_trunk) -> Path:
    torch.manual_seed(4)
    cfg = TrunkConfig(str(tiny_text_trunk), mode="full")
    model = build_model("sentiment", cfg).eval()
    return save_bundle(serve_dir / "sentiment", model, trunk_cfg=cfg,
                       site_heads={"site-1": _random_heads(model, 21)}, heads_mode="private")


@pytest.fixture(scope="module")
def server(sites_bundle, sentiment_bundle):
    with BackgroundServer(settings([sites_bundle, sentiment_bundle])) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def sequences_bundle(serve_dir, tiny_antibody_trunk) -> Path:
    """A bundle of the third kind (your own CSV + task card: two protein chains, two regression labels)."""
    from fedtune.tasks import get

    task = get("sequences")
    data = task.synthetic(40, 5)
    torch.manual_seed(5)
    cfg = TrunkConfig(str(tiny_antibody_trunk), mode="full")
    model = task.build_model(cfg, task.label_table(data)).eval()
    return save_bundle(serve_dir / "sequences", model, trunk_cfg=cfg, stats=task.fit_stats(data))
