"""The admin door: a separate admin key (refused without one, even when inference is open), reload paths
confined to the bundle roots, keys from mounted secret files, and no empty key meaning "no auth"."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from serve_helpers import antibodies, settings

from fedtune.bundle import load_bundle
from fedtune.serve.server import BackgroundServer
from fedtune.serve.settings import ServeSettings

ADMIN = "admin-k3y"
API = "api-k3y"


def test_admin_routes_refused_without_an_admin_key_even_when_inference_is_open(global_bundle_a):
    with BackgroundServer(settings([global_bundle_a], warmup=False)) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.post("/v1/fitness/predict", json={"antibodies": antibodies(1)}).status_code == 200   # open
        for body in (None, {}, {"bundles": [str(global_bundle_a)]}):
            r = c.post("/v1/admin/reload", json=body, headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403, r.text
            assert r.json()["code"] == "admin_disabled" and "FEDTUNE_ADMIN_KEY" in r.json()["error"]


def test_admin_key_is_separate_from_the_inference_key(global_bundle_a, global_bundle_b):
    digest_b = load_bundle(global_bundle_b).digest
    s = settings([global_bundle_a], api_key=API, admin_key=ADMIN, warmup=False)
    with BackgroundServer(s) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        body = {"bundles": [str(global_bundle_b)]}
        for headers in ({}, {"Authorization": f"Bearer {API}"}, {"X-API-Key": API}, {"X-API-Key": "wrong"}):
            r = c.post("/v1/admin/reload", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", (headers, r.text)
        # the admin key is not an inference key either
        r = c.post("/v1/fitness/predict", json={"antibodies": antibodies(1)}, headers={"X-API-Key": ADMIN})
        assert r.status_code == 401
        r = c.post("/v1/admin/reload", json=body, headers={"X-API-Key": ADMIN})
        assert r.status_code == 200 and r.json()["models"] == {"fitness": digest_b}, r.text


@pytest.mark.parametrize("outside", ["/etc", "/", "{parent}/..", "{bundle}/../../..", "relative/path", "\u0000x",
                                     "{outside_link}"])
def test_reload_paths_must_resolve_inside_the_bundle_roots(global_bundle_a, tmp_path_factory, outside):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    link = global_bundle_a.parent / f"link-out-{os.getpid()}"
    if not link.exists():
        link.symlink_to(elsewhere, target_is_directory=True)
    path = outside.format(parent=global_bundle_a.parent, bundle=global_bundle_a, outside_link=link)
    digest_a = load_bundle(global_bundle_a).digest
    with BackgroundServer(settings([global_bundle_a], admin_key=ADMIN, warmup=False)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60, headers={"X-API-Key": ADMIN}) as c:
        r = c.post("/v1/admin/reload", json={"bundles": [path]})
        assert r.status_code == 403 and r.json()["code"] == "path_not_allowed", r.text
        assert c.get("/v1/models").json()["models"][0]["digest"] == digest_a
        assert "fedtune_reload_failures_total 0.0" in c.get("/metrics").text     # refused before any read


def test_bundle_roots_setting_confines_and_allows(global_bundle_a, global_bundle_b, monkeypatch):
    monkeypatch.setenv("FEDTUNE_BUNDLE_ROOTS", f"{global_bundle_b}, /nonexistent")
    s = settings([global_bundle_a], admin_key=ADMIN, warmup=False)
    assert s.bundle_roots == [str(global_bundle_b), "/nonexistent"]
    with BackgroundServer(s) as srv, httpx.Client(base_url=srv.url, timeout=60, headers={"X-API-Key": ADMIN}) as c:
        assert c.post("/v1/admin/reload", json={"bundles": [str(global_bundle_a)]}).status_code == 403
        assert c.post("/v1/admin/reload", json={"bundles": [str(global_bundle_b)]}).status_code == 200


@pytest.mark.parametrize("var", ["FEDTUNE_API_KEY", "FEDTUNE_ADMIN_KEY"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_key_is_refused_not_read_as_no_auth(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=f"{var} is set but empty"):
        ServeSettings()


def test_keys_from_secret_files(monkeypatch, tmp_path):
    (tmp_path / "api").write_text("  api-from-file\n")
    (tmp_path / "admin").write_text("admin-from-file\n\n")
    monkeypatch.setenv("FEDTUNE_API_KEY_FILE", str(tmp_path / "api"))
    monkeypatch.setenv("FEDTUNE_ADMIN_KEY_FILE", str(tmp_path / "admin"))
    s = ServeSettings()
    assert s.key() == "api-from-file" and s.admin() == "admin-from-file"
    assert "from-file" not in repr(s)
    (tmp_path / "admin").write_text(" \n")
    with pytest.raises(ValueError, match="FEDTUNE_ADMIN_KEY_FILE.*is empty"):
        ServeSettings()
    monkeypatch.setenv("FEDTUNE_ADMIN_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="FEDTUNE_ADMIN_KEY_FILE: cannot read"):
        ServeSettings()
    monkeypatch.delenv("FEDTUNE_ADMIN_KEY_FILE")
    monkeypatch.setenv("FEDTUNE_API_KEY", "also-set")
    with pytest.raises(ValueError, match="not both"):
        ServeSettings()
    monkeypatch.delenv("FEDTUNE_API_KEY")
    monkeypatch.setenv("FEDTUNE_ADMIN_KEY", "api-from-file")
    with pytest.raises(ValueError, match="must differ"):
        ServeSettings()


@pytest.mark.parametrize("empty,other", [("FEDTUNE_API_KEY", "FEDTUNE_ADMIN_KEY"),
                                         ("FEDTUNE_ADMIN_KEY", "FEDTUNE_API_KEY")])
def test_serve_command_refuses_to_start_with_an_empty_key(global_bundle_a, empty, other):
    env = {**os.environ, empty: "", other: "s3cret-k3y", "FEDTUNE_DEVICE": "cpu"}
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--bundle", str(global_bundle_a),
           "--port", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{empty} is set but empty" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout           # the error never echoes a key
