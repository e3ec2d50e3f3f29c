"""Request-and-sign with NVFlare's own tools (the site's key never leaves it) and certificate expiry: real
provisioning, real certificates, the real `fedtune` command."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest

from fedtune.fl import csr
from fedtune.fl.federation import fedtune_command
from fedtune.fl.pki import PkiError, kit_expiry, kit_identity, root_fingerprint
from fedtune.fl.participants import site
from fedtune.fl.provision import ProvisionError, add_sites, provision


def fedtune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(fedtune_command(*args), capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(autouse=True)
def nvflare_home(tmp_path, monkeypatch):
    """NVFlare writes an audit record of each request/approval under ~/.nvflare: keep it in the test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return provision(tmp_path_factory.mktemp("coord") / "pki", ["lab-a@acme", "hospital-b@uni"])


def join(tmp_path, kits, name="lab-d", org="neworg", valid_days=360):
    """The whole flow through the command line; returns (request folder, signed zip, kit)."""
    req, signed = tmp_path / f"{name}-site" / "request", tmp_path / "inbox" / f"{name}.signed.zip"
    signed.parent.mkdir(exist_ok=True)
    p = fedtune("site", "request", "--name", name, "--org", org, "--out", str(req))
    assert p.returncode == 0, p.stderr
    p = fedtune("ca", "sign", str(req / f"{name}.request.zip"), "--pki", str(kits.root), "--out", str(signed),
                "--valid-days", str(valid_days))
    assert p.returncode == 0, p.stderr
    fp = root_fingerprint(kits.server)
    assert fp in p.stdout
    p = fedtune("site", "assemble", str(signed), "--request", str(req), "--out", str(tmp_path / f"{name}-site" / "kit"),
                "--fingerprint", fp)
    assert p.returncode == 0, p.stderr
    kit = next((tmp_path / f"{name}-site" / "kit").glob(f"*/prod_*/{name}"))
    return req, signed, kit


def test_a_site_kit_from_its_own_key(tmp_path, pki):
    req, signed, kit = join(tmp_path, pki)
    key = (req / "lab-d.key").read_bytes()
    assert (kit / "startup" / "client.key").read_bytes() == key
    assert kit_identity(kit) == ("site", "lab-d", "neworg")
    assert (kit / "startup" / "rootCA.pem").read_bytes() == (pki.server / "startup" / "rootCA.pem").read_bytes()
    with zipfile.ZipFile(signed) as zf:             # what travels back: certificate, root CA cert, metadata
        blob = b"".join(zf.read(n) for n in zf.namelist())
    assert key not in blob and b"PRIVATE KEY" not in blob
    with zipfile.ZipFile(req / "lab-d.request.zip") as zf:
        assert b"PRIVATE KEY" not in b"".join(zf.read(n) for n in zf.namelist())
    coordinator = [p for p in pki.root.rglob("*") if p.is_file() and key in p.read_bytes()]
    assert coordinator == []                        # the coordinator's folder never held the key
    assert not list(pki.root.glob(".ca-*"))         # the root key's working copy is gone
    assert json.loads((pki.root / csr.SIGNED_LOG).read_text())["lab-d"]["org"] == "neworg"
    with pytest.raises(ProvisionError, match="already a participant"):     # its name is taken for --add-site too
        add_sites(pki.root, [site("lab-d@other")])


def test_only_new_site_requests_are_signed(tmp_path, pki):
    req = tmp_path / "req"
    csr.request("lab-a", "acme", req)                # a name the federation already has
    with pytest.raises(PkiError, match="already a participant"):
        csr.sign(req / "lab-a.request.zip", pki.root)
    assert csr.sign(req / "lab-a.request.zip", pki.root, renew=True).is_file()   # a new cert for lab-a: explicit
    # a request for a server or admin certificate is refused (a site could otherwise act as the server)
    (tmp_path / "srv.yml").write_text(f"name: fedtune\nparticipants:\n  - {{name: {pki.server_name}, type: server, "
                                      f"org: evil}}\n")
    csr.nvflare("cert", "request", "-p", str(tmp_path / "srv.yml"), "--out", str(tmp_path / "srv"))
    p = fedtune("ca", "sign", str(tmp_path / "srv" / f"{pki.server_name}.request.zip"), "--pki", str(pki.root))
    assert p.returncode == 2 and "only site" in p.stderr
    assert not list((tmp_path / "srv").glob("*.signed.zip"))
    # junk and unsafe names are clear errors; a request folder that is not empty is never written into
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert fedtune("ca", "sign", str(tmp_path / "junk.zip"), "--pki", str(pki.root)).returncode == 2
    assert fedtune("site", "request", "--name", "Bad_Name", "--org", "x", "--out", str(tmp_path / "b")).returncode == 2
    p = fedtune("site", "request", "--name", "lab-z", "--org", "x", "--out", str(req))
    assert p.returncode == 2 and "not empty" in p.stderr


def test_a_wrong_fingerprint_builds_no_kit(tmp_path, pki):
    req = tmp_path / "req"
    csr.request("lab-e", "neworg", req)
    signed = csr.sign(req / "lab-e.request.zip", pki.root, tmp_path / "lab-e.signed.zip")
    other = provision(tmp_path / "other", 1)
    p = fedtune("site", "assemble", str(signed), "--request", str(req), "--out", str(tmp_path / "kit"),
                "--fingerprint", root_fingerprint(other.server))
    assert p.returncode == 2, p.stdout
    assert not list((tmp_path / "kit").rglob("client.key"))


def test_certs_show_expiry_and_warn(tmp_path, pki):
    p = fedtune("certs", "--workspace", str(pki.root))
    assert p.returncode == 0 and "WARNING" not in p.stdout, p.stdout
    for name in ("lab-a", "hospital-b", pki.server_name, pki.admin.name):
        assert name in p.stdout
    assert "days left" in p.stdout and root_fingerprint(pki.server) in p.stdout
    p = fedtune("certs", "--workspace", str(pki.root), "--warn-days", "400")     # 360-day certificates
    soon = [c for _, k in pki.participants().values() for c in kit_expiry(k) if c.days_left < 400]
    assert p.returncode == 1 and p.stdout.count("WARNING") == len(soon) == 4, p.stdout

    _, _, kit = join(tmp_path, pki, name="lab-f", valid_days=10)
    own = next(c for c in kit_expiry(kit) if c.file == "client.crt")
    assert 8 <= own.days_left <= 10
    p = fedtune("certs", "--kit", str(kit))
    assert p.returncode == 1 and "WARNING: client.crt of site lab-f expires in" in p.stdout, p.stdout
    # the site's own command warns at start (here it then stops: no data folder)
    p = fedtune("client", "--kit", str(kit), "--data", str(tmp_path / "no-data"))
    assert "client.crt of site lab-f expires in" in p.stderr and "WARNING" in p.stderr, p.stderr
    p = fedtune("client", "--kit", str(pki.sites["lab-a"]), "--data", str(tmp_path / "no-data"))
    assert "expires in" not in p.stderr
    assert fedtune("certs").returncode == 2
    assert fedtune("certs", "--kit", str(tmp_path)).returncode == 2
