"""Request-and-sign: a site joins with a key that never leaves it (NVFlare 2.9's `nvflare cert request`,
`nvflare cert approve`, `nvflare package`).

    site:        request(name, org, dir)        key + certificate request in DIR; send DIR/<name>.request.zip
    coordinator: sign(request_zip, out, signed)  checks the request (a site, a new name), signs it with the
                                                 federation's root CA; returns <name>.signed.zip (no key in it)
    site:        assemble(signed, dir, kit_dir, fingerprint)   the site's kit, built from its own key

The coordinator never sees the site's key; the site checks the root CA fingerprint it got out of band. NVFlare
keeps an audit record of each request/approval under ~/.nvflare/ (paths and hashes, no key).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from .participants import ParticipantError, check_org, check_site
from .pki import PkiError, root_fingerprint
from .provision import PROJECT, SIGNED_LOG, Kits, ca_state

SIGNED_SUFFIX = ".signed.zip"


def nvflare(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "nvflare"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "nvflare.cli"]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, umask=0o077, cwd=cwd, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise PkiError(f"nvflare {args[0]} {args[1] if len(args) > 1 else ''} failed ({res.returncode}): "
                       f"{(res.stdout + res.stderr).strip()[-1500:]}")
    return res


def request(name: str, org: str, out_dir: str | Path) -> Path:
    """Make this site's private key and certificate request in `out_dir` (new or empty); returns the request zip
    to send to the coordinator. The key (out_dir/<name>.key, 0600) stays here."""
    check_site(name)
    check_org(org)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise PkiError(f"{out_dir} is not empty: a request is made in a new folder (nothing there was changed)")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    participant = out_dir / "participant.yml"
    participant.write_text(yaml.safe_dump({"name": PROJECT, "participants": [
        {"name": name, "type": "client", "org": org}]}, sort_keys=False))
    nvflare("cert", "request", "-p", str(participant), "--out", str(out_dir))
    zip_path = out_dir / f"{name}.request.zip"
    if not zip_path.is_file() or not (out_dir / f"{name}.key").is_file():
        raise PkiError(f"nvflare cert request wrote no {zip_path.name} / {name}.key in {out_dir}")
    return zip_path


def read_request(zip_path: Path) -> dict:
    """request.json of a request zip, checked: a site (client certificate) with a safe name and organisation."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            info = zf.getinfo("request.json")
            if info.file_size > 100_000:
                raise PkiError(f"{zip_path}: request.json too large")
            meta = json.loads(zf.read(info))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PkiError(f"{zip_path}: not a certificate request made by `fedtune site request` ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != "site" or meta.get("cert_type") != "client":
        raise PkiError(f"{zip_path}: asks for a {meta.get('kind') if isinstance(meta, dict) else '?'} certificate; "
                       f"only site (client) requests are signed this way")
    if meta.get("project") != PROJECT:
        raise PkiError(f"{zip_path}: for project {meta.get('project')!r}, not {PROJECT!r}")
    try:
        check_site(meta.get("name"))
        check_org(meta.get("org"))
    except ParticipantError as exc:
        raise PkiError(f"{zip_path}: {exc}") from None
    return meta


def signed_sites(out: Path) -> dict:
    path = Path(out) / SIGNED_LOG
    return json.loads(path.read_text()) if path.is_file() else {}


def sign(request_zip: str | Path, out: str | Path, signed: str | Path | None = None, valid_days: int = 360,
         renew: bool = False) -> Path:
    """Sign a site's request with the root CA of provisioning folder `out`. A name that is already a participant
    (provisioned or signed before) is refused unless `renew` (a new certificate for the same site, e.g. before
    its old one expires). Returns the signed zip (certificate + root CA certificate; never a key)."""
    request_zip, out = Path(request_zip).resolve(), Path(out).resolve()
    meta = read_request(request_zip)
    name = meta["name"]
    if not (out / "kits.json").is_file() or not ca_state(out).is_file():
        raise PkiError(f"{out}: not a provisioning folder with its root CA (kits.json, {ca_state(out)})")
    if valid_days < 1:
        raise PkiError(f"--valid-days {valid_days}: at least 1")
    kits = Kits.load(out)
    taken = set(kits.participants()) | set(signed_sites(out))
    if name in taken and not renew:
        raise PkiError(f"{name!r} is already a participant of this federation; --renew issues it a new "
                       f"certificate, another name makes a new site")
    signed = Path(signed).resolve() if signed else request_zip.parent / f"{name}{SIGNED_SUFFIX}"
    if not signed.name.endswith(SIGNED_SUFFIX):
        raise PkiError(f"{signed}: the signed file's name must end in {SIGNED_SUFFIX} (NVFlare's rule)")
    if signed.exists():
        raise PkiError(f"{signed} exists: not overwritten")
    state = json.loads(ca_state(out).read_text())
    tmp = Path(tempfile.mkdtemp(prefix=".ca-", dir=out))       # 0700, next to the CA state, removed below
    try:
        (tmp / "rootCA.pem").write_text(state["root_cert"])
        fd = os.open(tmp / "rootCA.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(state["root_pri_key"])
        (tmp / "ca.json").write_text(json.dumps({"project": PROJECT, "provision_version": "00"}))
        (tmp / "profile.yml").write_text(yaml.safe_dump({
            "name": PROJECT, "scheme": kits.scheme, "connection_security": "mtls",
            "server": {"host": kits.server_name, "fed_learn_port": kits.fl_port, "admin_port": kits.admin_port}}))
        nvflare("cert", "approve", str(request_zip), "--ca-dir", str(tmp), "--profile", str(tmp / "profile.yml"),
                "--out", str(signed), "--valid-days", str(valid_days))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log = signed_sites(out)
    log[name] = {"org": meta["org"], "request_id": meta.get("request_id"), "signed": signed.name,
                 "valid_days": valid_days}
    (out / SIGNED_LOG).write_text(json.dumps(log, indent=2))
    return signed


def assemble(signed: str | Path, request_dir: str | Path, kit_dir: str | Path, fingerprint: str) -> Path:
    """Build this site's kit from the coordinator's signed zip and the key in `request_dir`, after checking the
    root CA against `fingerprint` (from the coordinator, out of band). Returns the kit folder."""
    signed, request_dir, kit_dir = Path(signed).resolve(), Path(request_dir).resolve(), Path(kit_dir).resolve()
    if not signed.name.endswith(SIGNED_SUFFIX) or not signed.is_file():
        raise PkiError(f"{signed}: expected the <name>{SIGNED_SUFFIX} the coordinator returned")
    if not fingerprint.strip():
        raise PkiError("--fingerprint is required: the root CA fingerprint the coordinator gave you out of band")
    if kit_dir.exists() and any(kit_dir.iterdir()):
        raise PkiError(f"{kit_dir} is not empty: a kit is assembled into a new folder (nothing was changed)")
    nvflare("package", str(signed), "-w", str(kit_dir), "--request-dir", str(request_dir),
            "--fingerprint", fingerprint.strip())
    kits = [p.parent.parent for p in kit_dir.glob(f"{PROJECT}/prod_*/*/startup/fed_client.json")]
    if len(kits) != 1:
        raise PkiError(f"nvflare package wrote {len(kits)} kits into {kit_dir}")
    if root_fingerprint(kits[0]).replace(":", "").upper() != fingerprint.strip().replace(":", "").upper():
        raise PkiError(f"{kits[0]}: its root CA is not the one with fingerprint {fingerprint}")
    return kits[0]
