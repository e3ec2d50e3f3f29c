"""Loading a bundle trusts nothing its manifest says about files: every file it names must be a plain path
inside the bundle listed in the digest map, a plain regular file, read once; a symlinked bundle is resolved
once. The served model card never shows per-site data digests."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from serve_helpers import settings

from fedtune.bundle import BundleError, load_bundle
from fedtune.serve.server import BackgroundServer

HEADS = "heads/global.safetensors"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _point_heads_at(bundle: Path, rel: str, source: Path, listed: bool = True) -> None:
    """Make the manifest load the global heads from `rel` (whose bytes are `source`'s)."""
    m = _manifest(bundle)
    m["heads"]["sets"]["global"]["file"] = rel
    m["tensors"][rel] = m["tensors"][HEADS]
    if listed:
        m["files"][rel] = _sha(source)
    _write_manifest(bundle, m)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "unlisted", "symlink", "trunk_absolute"])
def test_manifest_cannot_point_outside_the_bundle_or_past_its_digests(global_bundle_a, global_bundle_b,
                                                                      tmp_path, case):
    a, b = _copy(global_bundle_a, tmp_path / "a"), _copy(global_bundle_b, tmp_path / "b")
    other = b / HEADS                                     # valid weights, but not this bundle's
    if case == "dotdot":
        _point_heads_at(a, f"../b/{HEADS}", other)
        match = "not a plain path inside the bundle"
    elif case == "absolute":
        _point_heads_at(a, str(other), other)
        match = "not a plain path inside the bundle"
    elif case == "unlisted":
        shutil.copy(other, a / "heads" / "extra.safetensors")
        _point_heads_at(a, "heads/extra.safetensors", other, listed=False)
        match = "digest map does not list"
    elif case == "symlink":
        (a / HEADS).unlink()
        (a / HEADS).symlink_to(other)
        m = _manifest(a)
        m["files"][HEADS] = _sha(other)
        _write_manifest(a, m)
        match = "symbolic link"
    else:
        m = _manifest(a)
        m["trunk"]["files"].append(str(other))
        _write_manifest(a, m)
        match = "not a plain path inside the bundle"
    with pytest.raises(BundleError, match=match):
        load_bundle(a)


def test_a_file_that_changes_between_reads_is_never_used(global_bundle_a, tmp_path):
    """trunk/config.json as a FIFO that gives the right bytes on the first read and other bytes after: a
    loader that hashes one read and loads from another would run the second (here: another activation)."""
    a = _copy(global_bundle_a, tmp_path / "a")
    config = a / "trunk" / "config.json"
    good = config.read_bytes()
    evil = json.dumps({**json.loads(good), "hidden_act": "relu"}).encode()
    config.unlink()
    os.mkfifo(config)
    stop = threading.Event()

    def feed():
        for i in range(50):                               # bounded
            try:
                with open(config, "wb") as f:             # blocks until a reader opens the FIFO
                    if stop.is_set():
                        return
                    f.write(good if i == 0 else evil)
            except OSError:
                pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(BundleError, match="not a regular file"):
            load_bundle(a)
    finally:
        stop.set()
        fd = os.open(config, os.O_RDONLY | os.O_NONBLOCK)  # let a writer blocked in open() finish
        writer.join(10)
        os.close(fd)


def test_a_symlinked_bundle_is_resolved_once(global_bundle_a, tmp_path):
    version = _copy(global_bundle_a, tmp_path / ".fitness.versions" / "v1")
    link = tmp_path / "fitness"
    link.symlink_to(version, target_is_directory=True)
    bundle = load_bundle(link)
    assert bundle.path == version.resolve()
    assert bundle.digest == load_bundle(global_bundle_a).digest


def test_served_model_card_never_shows_data_digests(global_bundle_a, tmp_path):
    old = _copy(global_bundle_a, tmp_path / "old-export")     # as older exports wrote them
    m = _manifest(old)
    m["provenance"] = {"rounds": 3, "data_digests": {"site-1": "ab" * 32, "site-2": "cd" * 32},
                       "stats": {"data_digests": {"site-1": "ef" * 32}, "sites": ["site-1", "site-2"]}}
    _write_manifest(old, m)
    with BackgroundServer(settings([old], warmup=False)) as srv, httpx.Client(base_url=srv.url) as c:
        card = c.get("/v1/models").json()["models"][0]
        assert card["provenance"] == {"rounds": 3, "stats": {"sites": ["site-1", "site-2"]}}
        for path in ("/v1/models", "/v2/models/fitness", f"/v2/models/fitness/versions/{card['version']}"):
            text = c.get(path).text
            assert "data_digests" not in text and "ab" * 32 not in text, path
