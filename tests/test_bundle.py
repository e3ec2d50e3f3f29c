import json
import re

import numpy as np
import pytest
import torch

from fedtune.bundle import BundleError, load_bundle, save_bundle
from fedtune.data import AssayStats, synthetic_fitness, synthetic_sentiment
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model


@pytest.fixture()
def fitness_bundle(tmp_path, tiny_antibody_trunk):
    data = synthetic_fitness(30, seed=5)
    cfg = TrunkConfig(str(tiny_antibody_trunk), mode="lora")
    model = build_model("fitness", cfg, data.assays).eval()
    # make the LoRA adapters non-trivial so that merging is exercised
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items() if k.startswith("heads.")}
    stats = AssayStats.fit(data)
    path = save_bundle(tmp_path / "bundle", model, trunk_cfg=cfg, stats=stats, site_heads={"site-2": other},
                       heads_mode="private", sites=["site-1", "site-2"], metrics={"site-2": {"mean_pearson": 0.5}},
                       provenance={"how": "test", "rounds": 2})
    return path, model, data, other


def test_round_trip_gives_identical_predictions(fitness_bundle):
    path, model, data, other = fitness_bundle
    bundle = load_bundle(path)
    with torch.no_grad():
        emb = model.embed(data.heavy, data.light)
        expected_global = model.apply_heads(emb)
        model.heads.load_state_dict({k.removeprefix("heads."): v for k, v in other.items()})
        expected_site = model.apply_heads(emb)
    pairs = list(zip(data.heavy, data.light))
    got_global = bundle.predict(pairs)
    got_site = bundle.predict(pairs, "site-2")
    for task in bundle.model.tasks:
        np.testing.assert_allclose(got_global[task], expected_global[task].numpy(), atol=1e-5)
        np.testing.assert_allclose(got_site[task], expected_site[task].numpy(), atol=1e-5)
        assert not np.allclose(got_global[task], got_site[task])
    m = bundle.manifest
    assert m["kind"] == "fitness" and m["heads"]["mode"] == "private" and m["provenance"]["rounds"] == 2
    assert set(m["files"]) >= {"trunk/model.safetensors", "heads/global.safetensors", "heads/site-2.safetensors"}
    assert m["trunk"]["trained_mode"] == "lora" and m["tasks"][0] == "aggregation"
    assert set(m["target_stats"]) == {"global", "site-2"}
    with pytest.raises(KeyError, match="site-9"):
        bundle.predict(pairs[:1], "site-9")


def test_flipped_byte_in_a_weight_file_is_refused(fitness_bundle):
    path = fitness_bundle[0]
    f = path / "trunk" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="trunk/model.safetensors is corrupt"):
        load_bundle(path)


def test_shape_mismatch_with_manifest_is_refused(fitness_bundle):
    path = fitness_bundle[0]
    manifest = json.loads((path / "manifest.json").read_text())
    key = next(iter(manifest["tensors"]["heads/global.safetensors"]))
    manifest["tensors"]["heads/global.safetensors"][key]["shape"][0] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(path)


@pytest.mark.parametrize("damage", ["missing_file", "no_manifest", "bad_json", "future_version"])
def test_broken_bundles_get_clear_errors(fitness_bundle, damage):
    path = fitness_bundle[0]
    if damage == "missing_file":
        (path / "heads" / "site-2.safetensors").unlink()
        match = "missing file heads/site-2.safetensors"
    elif damage == "no_manifest":
        (path / "manifest.json").unlink()
        match = "not a bundle"
    elif damage == "bad_json":
        (path / "manifest.json").write_text("{")
        match = "unreadable manifest"
    else:
        m = json.loads((path / "manifest.json").read_text())
        m["format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(m))
        match = "not supported"
    with pytest.raises(BundleError, match=match):
        load_bundle(path)


@pytest.mark.parametrize("kind", ["stability", ["fitness"], None])
def test_a_manifest_of_an_unknown_kind_is_refused(fitness_bundle, kind):
    path = fitness_bundle[0]
    m = json.loads((path / "manifest.json").read_text())
    m["kind"] = kind
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=re.escape(f"unknown kind {kind!r}")):
        load_bundle(path)


def test_sentiment_bundle_round_trip(tmp_path, tiny_text_trunk):
    data = synthetic_sentiment(10)
    cfg = TrunkConfig(str(tiny_text_trunk), mode="full")
    model = build_model("sentiment", cfg).eval()
    bundle = load_bundle(save_bundle(tmp_path / "s", model, trunk_cfg=cfg))
    with torch.no_grad():
        expected = model(data.texts).softmax(-1).numpy()
    np.testing.assert_allclose(bundle.predict(data.texts, kind="sentiment"), expected, atol=1e-5)
    assert bundle.manifest["labels"] == ["negative", "neutral", "positive"]
    with pytest.raises(BundleError, match="cannot predict fitness"):
        bundle.predict([("EVQL", "DIQM")], kind="fitness")


def test_ptuning_bundle_serves_the_learned_virtual_tokens(tmp_path, tiny_antibody_trunk):
    data = synthetic_fitness(8, seed=1)
    cfg = TrunkConfig(str(tiny_antibody_trunk), mode="ptuning", virtual_tokens=5)
    model = build_model("fitness", cfg, data.assays).eval()
    bundle = load_bundle(save_bundle(tmp_path / "p", model, trunk_cfg=cfg, stats=AssayStats.fit(data)))
    assert bundle.manifest["trunk"]["virtual_tokens"] == 5
    with torch.no_grad():
        expected = model(data.heavy, data.light)
    got = bundle.predict(list(zip(data.heavy, data.light)))
    for task, value in expected.items():
        np.testing.assert_allclose(got[task], value.numpy(), atol=1e-5)
