"""Saving a bundle replaces only an earlier bundle, never leaves the path without a whole one, and keeps the
earlier bundle when it fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from fedtune.bundle import load_bundle, save_bundle
from fedtune.fl.config import JobConfig
from fedtune.models import TrunkConfig
from fedtune.tasks import build_model
from fedtune.publish import KEEP, MARKER, PublishError, versions_dir


@pytest.fixture(scope="module")
def sentiment(tiny_text_trunk):
    cfg = TrunkConfig(str(tiny_text_trunk), mode="full")
    return build_model("sentiment", cfg).eval(), cfg


def save(out: Path, sentiment, **kw) -> Path:
    model, cfg = sentiment
    return save_bundle(out, model, trunk_cfg=cfg, **kw)


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "results.csv").write_text("a,b\n1,2\n")
    (path / "README.txt").write_text("mine")
    return path


def test_a_folder_that_is_not_a_bundle_is_refused_and_untouched(tmp_path, sentiment):
    out = user_folder(tmp_path / "exports")
    before = tree(tmp_path)
    with pytest.raises(PublishError, match="not an earlier fedtune output"):
        save(out, sentiment)
    assert tree(tmp_path) == before          # nothing touched, nothing written next to it


def test_a_foreign_symlink_or_versions_folder_is_refused(tmp_path, sentiment):
    target = user_folder(tmp_path / "elsewhere")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(PublishError, match="symlink fedtune did not make"):
        save(tmp_path / "link", sentiment)
    assert os.readlink(tmp_path / "link") == str(target) and (target / "README.txt").read_text() == "mine"
    user_folder(versions_dir(tmp_path / "b"))
    with pytest.raises(PublishError, match="not made by fedtune"):
        save(tmp_path / "b", sentiment)
    assert not (tmp_path / "b").exists() and (versions_dir(tmp_path / "b") / "README.txt").read_text() == "mine"


def test_reexport_swaps_in_one_rename_and_keeps_a_few_versions(tmp_path, sentiment, monkeypatch):
    out = tmp_path / "sentiment"
    save(out, sentiment)
    stranger = versions_dir(out) / "keep-me.txt"
    stranger.write_text("not a version")
    versions = {os.path.realpath(out)}
    real_replace, real_rename = os.replace, os.rename

    def watched(real):   # after every rename the path must still hold a whole bundle
        def call(src, dst, *a, **kw):
            real(src, dst, *a, **kw)
            assert (out / "manifest.json").is_file(), f"{out} had no bundle after rename {src} -> {dst}"
        return call

    monkeypatch.setattr(os, "replace", watched(real_replace))
    monkeypatch.setattr(os, "rename", watched(real_rename))
    for i in range(KEEP + 2):
        save(out, sentiment, provenance={"n": i})
        assert out.is_symlink() and load_bundle(out).manifest["provenance"] == {"n": i}
        versions.add(os.path.realpath(out))
    monkeypatch.undo()
    # every export: a new version folder behind the path (what the inference entrypoint watches: readlink -f;
    # inode numbers are no proof, the file system reuses those of pruned versions)
    assert len(versions) == KEEP + 3
    versions = [p for p in versions_dir(out).iterdir() if p.is_dir()]
    assert len(versions) == KEEP and out.resolve() in versions
    assert stranger.read_text() == "not a version" and (versions_dir(out) / MARKER).is_file()


def test_a_plain_bundle_folder_of_an_older_fedtune_is_migrated(tmp_path, sentiment):
    staged = save(tmp_path / "staged", sentiment, provenance={"old": True})
    out = tmp_path / "bundle"
    shutil.copytree(staged, out)                        # the old layout: a plain folder with our manifest
    save(out, sentiment, provenance={"old": False})
    assert out.is_symlink() and load_bundle(out).manifest["provenance"] == {"old": False}
    legacy = [p for p in versions_dir(out).iterdir() if "legacy" in p.name]
    assert len(legacy) == 1 and load_bundle(legacy[0]).manifest["provenance"] == {"old": True}


def test_a_failed_save_keeps_the_earlier_bundle(tmp_path, sentiment):
    out = tmp_path / "bundle"
    save(out, sentiment, provenance={"n": 1})
    before = tree(versions_dir(out))
    with pytest.raises(AttributeError):
        save(out, sentiment, site_heads={"site-1": {"w": "not a tensor"}})
    assert tree(versions_dir(out)) == before and load_bundle(out).manifest["provenance"] == {"n": 1}


def job_result(root: Path, sentiment) -> Path:
    """A finished job's result folder as the controller writes it (job.json, summary.json, global weights)."""
    model, cfg = sentiment
    fed = root / "workspace" / "app_server" / "fedtune"
    fed.mkdir(parents=True)
    job = JobConfig(kind="sentiment", name="t", trunk={"source": cfg.source, "mode": "full"})
    (fed / "job.json").write_text(json.dumps(job.to_dict()))
    (fed / "summary.json").write_text(json.dumps({"sites": {"site-1": {"final_val": {"accuracy": 0.5}}}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(fed / "global.safetensors"))
    return root


def test_export_command_refuses_a_user_folder_and_replaces_its_own_bundle(tmp_path, sentiment):
    result = job_result(tmp_path / "result", sentiment)
    out = user_folder(tmp_path / "exports")
    before = tree(out)
    cmd = [sys.executable, "-m", "fedtune", "export", "--result", str(result), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "not an earlier fedtune output" in proc.stderr, proc.stderr
    assert tree(out) == before and not versions_dir(out).exists()
    good = tmp_path / "bundle"
    for _ in range(2):
        cmd[-1] = str(good)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    assert load_bundle(good).kind == "sentiment" and good.is_symlink()


def test_train_local_refuses_a_user_folder_at_its_bundle_path_before_training(tmp_path, tiny_text_trunk):
    subprocess.run([sys.executable, "-m", "fedtune", "prepare-data", "sentiment", "--out", str(tmp_path / "sites"),
                    "--sites", "1", "--samples", "40"], check=True, capture_output=True)
    user_folder(tmp_path / "run" / "bundle")
    before = tree(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "fedtune", "train-local", "sentiment", "--data",
                           str(tmp_path / "sites" / "site-1"), "--out", str(tmp_path / "run"), "--trunk",
                           str(tiny_text_trunk), "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "not an earlier fedtune output" in proc.stderr, proc.stderr
    assert tree(tmp_path / "run") == before          # refused before training wrote metrics or logs
