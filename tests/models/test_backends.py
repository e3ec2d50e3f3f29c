"""CPU trunk backends (`fedtune.models.backends`): each agrees with fp32 on a tiny random trunk, runs through a
loaded bundle's own predict path, and refuses what it cannot do without changing the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedtune.bundle import load_bundle, save_bundle
from fedtune.data import AssayStats, synthetic_fitness
from fedtune.models import TrunkConfig
from fedtune.models.backends import BACKENDS, BackendError, apply_backend, backend_of
from fedtune.tasks import build_model

# Pearson of every head output vs fp32 on a tiny random trunk (hidden 32, 2 layers). Measured on this 2-core
# AVX2 machine: bf16 0.99999999999, int8 0.9999999993, onnx-int8 0.9999996; the bound keeps a 30x margin on the
# worst. The FLAb bound of docs/serve.md (>= 0.999 on AntiBERTy's task scores) is measured by
# benchmarks/backend_bench.py.
MIN_PEARSON = 0.99999


@pytest.fixture(scope="module")
def fp32_model(tiny_antibody_trunk):
    torch.manual_seed(0)
    data = synthetic_fitness(40, seed=0)
    return build_model("fitness", TrunkConfig(str(tiny_antibody_trunk), mode="frozen"), data.assays).eval()


@pytest.fixture(scope="module")
def chains():
    data = synthetic_fitness(48, seed=7)
    return list(data.heavy), list(data.light)


def _outputs(model, chains) -> np.ndarray:
    with torch.inference_mode():
        return model.assay_outputs(model.embed(*chains)).float().numpy()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "fp32"])
def test_backend_agrees_with_fp32(fp32_model, chains, backend):
    expected = _outputs(fp32_model, chains)
    model = apply_backend(copy.deepcopy(fp32_model), backend)
    assert backend_of(model) == backend and backend_of(fp32_model) == "fp32"
    got = _outputs(model, chains)
    assert got.shape == expected.shape and np.all(np.isfinite(got))
    r = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    assert r >= MIN_PEARSON, f"{backend}: Pearson {r:.6f} vs fp32"
    assert not np.array_equal(got, expected)          # the backend really runs (fp32 would be identical)


def test_fp32_is_the_model_unchanged(fp32_model):
    encoder = fp32_model.trunk.encoder
    assert apply_backend(fp32_model, "fp32") is fp32_model and fp32_model.trunk.encoder is encoder


def test_refusals_leave_the_model_unchanged(fp32_model):
    model = copy.deepcopy(fp32_model)
    encoder = model.trunk.encoder
    with pytest.raises(BackendError, match="unknown backend 'int4'"):
        apply_backend(model, "int4")
    assert model.trunk.encoder is encoder and backend_of(model) == "fp32"
    model.trunk.prompt = torch.nn.Linear(1, 1)        # a p-tuning trunk feeds embeddings, not token ids
    with pytest.raises(BackendError, match="p-tuning"):
        apply_backend(model, "onnx-int8")
    assert model.trunk.encoder is encoder
    model.trunk.prompt = None
    apply_backend(model, "int8")
    with pytest.raises(BackendError, match="already runs the int8 backend"):
        apply_backend(model, "bf16")


def test_a_loaded_bundle_predicts_through_the_backend(tmp_path, tiny_antibody_trunk, chains):
    """The hook `fedtune predict --backend` and the service use: load_bundle, then apply_backend on its model."""
    torch.manual_seed(1)
    data = synthetic_fitness(40, seed=1)
    cfg = TrunkConfig(str(tiny_antibody_trunk), mode="full")
    path = save_bundle(tmp_path / "b", build_model("fitness", cfg, data.assays).eval(), trunk_cfg=cfg,
                       stats=AssayStats.fit(data))
    items = list(zip(*chains))[:8]
    expected = load_bundle(path).predict(items)
    bundle = load_bundle(path)
    apply_backend(bundle.model, "int8")
    got = bundle.predict(items)
    assert set(got) == set(expected)
    for task, values in expected.items():
        assert np.corrcoef(got[task].ravel(), values.ravel())[0, 1] >= MIN_PEARSON
