"""Real NVFlare provisioning never deletes a root CA or kits, and leaves every private key owner-only."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest

from fedtune.fl.federation import fedtune_command
from fedtune.fl.provision import ProvisionError, ca_state, provision


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its content ('dir' for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def holds_private_key(path: Path) -> bool:
    """A PEM private key, or NVFlare's cert.json-like state (any JSON with a `*pri_key*` entry)."""
    raw = path.read_bytes()
    if b"PRIVATE KEY-----" in raw:
        return True
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    return "pri_key" in json.dumps(data)


def test_every_file_with_a_private_key_is_owner_only(tmp_path):
    out = tmp_path / "pki"
    kits = provision(out, 2)
    secrets = [p for p in out.rglob("*") if p.is_file() and holds_private_key(p)]
    # root CA state + a key per participant (server, 2 sites, admin) at least
    assert ca_state(out) in secrets
    for kit in [kits.server, kits.admin, *kits.sites.values()]:
        assert any(p.is_relative_to(kit) and p.suffix == ".key" for p in secrets), kit
    for p in secrets:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, f"{p}: {oct(p.stat().st_mode)}"
        for folder in p.relative_to(out).parents:
            mode = (out / folder).stat().st_mode
            assert stat.S_IMODE(mode) & 0o077 == 0, f"{out / folder}: {oct(mode)}"


def test_kits_are_reused_and_force_keeps_the_root_ca_and_the_earlier_kits(tmp_path):
    out = tmp_path / "pki"
    first = provision(out, 2)
    ca_before = ca_state(out).read_bytes()
    old_kits = snapshot(first.server.parent)
    ca_state(out).chmod(0o644)                                # as an older fedtune left it
    ca_state(out).parent.chmod(0o755)
    assert provision(out, 3).server == first.server          # kits.json: reused unchanged ...
    assert stat.S_IMODE(ca_state(out).stat().st_mode) == 0o600 and snapshot(first.server.parent) == old_kits
    assert stat.S_IMODE(ca_state(out).parent.stat().st_mode) == 0o700     # ... with its keys closed
    ca_state(out).chmod(0o644)
    second = provision(out, 3, force=True)
    assert second.server.parent != first.server.parent and "site-3" in second.sites
    assert snapshot(first.server.parent) == old_kits           # earlier kits still there, untouched
    state = json.loads(ca_state(out).read_text())
    assert state["root_cert"] == json.loads(ca_before)["root_cert"]   # same root CA signs the new kits
    assert stat.S_IMODE(ca_state(out).stat().st_mode) == 0o600
    backups = list((out / "ca-backups").iterdir())
    assert [b.read_bytes() for b in backups] == [ca_before]
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    assert (second.server / "startup" / "rootCA.pem").read_bytes() == (first.server / "startup" / "rootCA.pem").read_bytes()


def test_workspace_without_kits_json_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "pki"
    provision(out, 2)
    (out / "kits.json").unlink()
    before = snapshot(out)
    with pytest.raises(ProvisionError, match="cert.json.*--force"):
        provision(out, 2)
    assert snapshot(out) == before
    # the command line says so and exits non-zero
    proc = subprocess.run(fedtune_command("provision", "--out", str(out), "--sites", "2"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "root CA" in proc.stderr and "--force" in proc.stderr, proc.stderr
    assert snapshot(out) == before


def test_a_foreign_workspace_is_not_provisioned_into_even_with_force(tmp_path):
    out = tmp_path / "pki"
    (out / "workspace" / "theirs").mkdir(parents=True)
    (out / "workspace" / "theirs" / "notes.txt").write_text("keep me")
    before = snapshot(out)
    for force in (False, True):
        with pytest.raises(ProvisionError):
            provision(out, 2, force=force)
        assert snapshot(out) == before
