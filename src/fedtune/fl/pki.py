"""The federation's certificates: who a kit is, when its certificates expire, and the root CA state backed up
and restored (never replaced).

    kit_identity(kit)            role (server|site|admin), name, organisation: read from the kit itself
    kit_expiry(kit)              each certificate of a kit (its own, rootCA.pem) with its expiry and days left
    backup_ca(out, file)         a tar.gz (0600) of the CA state, project.yml and kits.json
    reissue(out, names)          a new key + certificate for some participants, the other kits untouched
    restore_ca(file, out)        puts the CA state and project.yml back where no CA is (or the same CA is), never
                                 over another; `fedtune provision --force` then re-issues the same kits

NVFlare has no revocation: a certificate stays valid until it expires, so the expiry is what bounds a kit that
left a site. See docs/deploy.md (re-issue runbook, retiring a site).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .provision import PROJECT, Kits, ProvisionError, back_up_ca, ca_state, keep_storage_in_kit, \
    make_private, refuse_second_ca, run_nvflare

log = logging.getLogger(__name__)
WARN_DAYS = 30
CONFIGS = {"fed_server.json": "server", "fed_client.json": "site", "fed_admin.json": "admin"}
DISABLED = "disabled_clients.json"     # NVFlare's list of retired sites, in the server kit
BACKUP_MEMBERS = ("workspace/fedtune/state/cert.json", "project.yml", "kits.json")


class PkiError(ValueError):
    """A kit, certificate or CA backup that cannot be used as asked."""


@dataclass
class CertInfo:
    kit: str          # participant name
    role: str         # server | site | admin
    file: str         # startup/<file>
    subject: str
    not_after: dt.datetime
    days_left: int

    def line(self) -> str:
        return (f"{self.role:6} {self.kit:28} {self.file:16} expires {self.not_after:%Y-%m-%d %H:%M} UTC "
                f"({self.days_left} days left)")


def kit_identity(kit: str | Path) -> tuple[str, str, str]:
    """(role, name, organisation) of a startup kit, from its config and its own certificate."""
    startup = Path(kit) / "startup"
    for config, role in CONFIGS.items():
        if (startup / config).is_file():
            break
    else:
        raise PkiError(f"{kit}: not a startup kit (no startup/fed_server.json, fed_client.json or fed_admin.json)")
    cert = load_cert(startup / ("server.crt" if role == "server" else "client.crt"))
    from cryptography.x509.oid import NameOID
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return role, cn[0].value if cn else Path(kit).name, org[0].value if org else PROJECT


def kit_org(kit: str | Path) -> str:
    """The organisation in a kit's certificate (NVFlare's `org`, used by its authorization policies)."""
    try:
        return kit_identity(kit)[2]
    except (PkiError, OSError):
        return PROJECT


def admin_username(kit: str | Path) -> str:
    """The admin's user name, as NVFlare wrote it into the admin kit."""
    try:
        return json.loads((Path(kit) / "startup" / "fed_admin.json").read_text())["admin"]["username"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PkiError(f"{kit}: not an admin startup kit ({exc})") from None


def load_cert(path: Path):
    from cryptography import x509
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: not a readable PEM certificate ({exc})") from None


def root_fingerprint(kit_or_pem: str | Path) -> str:
    """SHA-256 fingerprint of the root CA certificate (of a kit, or a rootCA.pem): compare it out of band."""
    from cryptography.hazmat.primitives import hashes
    path = Path(kit_or_pem)
    path = path / "startup" / "rootCA.pem" if path.is_dir() else path
    digest = load_cert(path).fingerprint(hashes.SHA256()).hex().upper()
    return "SHA256:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def kit_expiry(kit: str | Path, now: dt.datetime | None = None) -> list[CertInfo]:
    """Every certificate in a kit's startup/ (its own and the root CA's), soonest expiry first."""
    role, name, _ = kit_identity(kit)
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for path in sorted((Path(kit) / "startup").glob("*")):
        if path.suffix not in (".crt", ".pem") or not path.is_file():
            continue
        cert = load_cert(path)
        after = cert.not_valid_after_utc
        out.append(CertInfo(name, role, path.name, cert.subject.rfc4514_string(), after,
                            int((after - now).total_seconds() // 86400)))
    return sorted(out, key=lambda c: c.not_after)


def warn_if_expiring(kit: str | Path, days: int = WARN_DAYS) -> list[str]:
    """Log (and return) a WARNING for each certificate of the kit that expires within `days`."""
    try:
        infos = kit_expiry(kit)
    except (PkiError, OSError):
        return []     # the command itself reports a broken kit
    msgs = [f"certificate {c.file} of {c.role} {c.kit} " + (f"expired on {c.not_after:%Y-%m-%d}" if c.days_left < 0
            else f"expires in {c.days_left} days ({c.not_after:%Y-%m-%d})") + ": re-issue the kit (docs/deploy.md)"
            for c in infos if c.days_left < days]
    for m in msgs:
        log.warning(m)
    return msgs


# ---- CA backup / restore ------------------------------------------------------------------------------------
def _write_private(path: Path, data: bytes) -> None:
    """Create `path` (0600); an existing file is never overwritten."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def backup_ca(out: str | Path, file: str | Path) -> Path:
    """Write the CA state of provisioning folder `out` (root CA key and every participant's key, project.yml,
    kits.json) to `file`, a new tar.gz readable by its owner only. An existing file is refused."""
    out, file = Path(out).resolve(), Path(file).resolve()
    if not ca_state(out).is_file():
        raise PkiError(f"{out}: no root CA state ({ca_state(out)}); nothing to back up")
    if file.exists():
        raise PkiError(f"{file} exists: choose a new file (a backup never overwrites anything)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in BACKUP_MEMBERS:
            if (out / name).is_file():
                data = (out / name).read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o600, int((out / name).stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
    _write_private(file, buf.getvalue())
    return file


def read_backup(file: str | Path) -> dict[str, bytes]:
    """The members of a CA backup, checked: only the known names, regular files, a cert.json with a root CA."""
    try:
        with tarfile.open(file, mode="r:gz") as tar:
            members = {}
            for m in tar.getmembers():
                if m.name not in BACKUP_MEMBERS or not m.isfile() or m.size > 50_000_000:
                    raise PkiError(f"{file}: unexpected member {m.name!r}: not a fedtune CA backup")
                members[m.name] = tar.extractfile(m).read()
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise PkiError(f"{file}: not a readable CA backup ({exc})") from None
    try:
        state = json.loads(members[BACKUP_MEMBERS[0]])
        assert state["root_cert"] and state["root_pri_key"]
    except (KeyError, ValueError, TypeError, AssertionError):
        raise PkiError(f"{file}: holds no root CA state (cert.json with root_cert and root_pri_key)") from None
    return members


def restore_ca(file: str | Path, out: str | Path) -> list[Path]:
    """Put a CA backup into provisioning folder `out`. A file that exists with other content is never replaced
    (a different root CA there is refused); identical files are left; returns the files written. Afterwards
    `fedtune provision --out OUT --force` (with the same participants) re-issues kits from this CA."""
    out = Path(out).resolve()
    members = read_backup(file)
    members.pop("kits.json", None)      # names kit folders of the machine it came from: provisioning rewrites it
    clashes = [n for n, data in members.items() if (out / n).exists() and (out / n).read_bytes() != data]
    if clashes:
        theirs = ca_state(out)
        why = (f"{theirs} holds another root CA (sha256 {hashlib.sha256(theirs.read_bytes()).hexdigest()[:16]})"
               if str(BACKUP_MEMBERS[0]) in clashes else f"{', '.join(clashes)} differ from the backup")
        raise PkiError(f"not restored into {out}: {why}; nothing was changed. Restore into an empty folder.")
    written = []
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in members.items():
        if not (out / name).exists():
            _write_private(out / name, data)
            written.append(out / name)
    if (out / "workspace").is_dir():
        make_private(out / "workspace")
    return written


# ---- re-issue -----------------------------------------------------------------------------------------------
def reissue(out: str | Path, names: list[str]) -> Kits:
    """New key and certificate (a fresh validity period) for each named participant, from the same root CA;
    every other kit stays as it is. The CA state is backed up first; kits.json then points at the new kits.
    NVFlare keeps a participant's certificate in its CA state and re-uses it on every provisioning: without
    this, `--force` would hand out the same (expiring) certificate again."""
    out = Path(out).resolve()
    if not (out / "kits.json").is_file():
        raise ProvisionError(f"{out}: no kits.json; provision the federation first")
    refuse_second_ca(out)
    if not ca_state(out).is_file():
        raise ProvisionError(f"{ca_state(out)} is missing: restore the CA first (`fedtune ca restore`)")
    kits = Kits.load(out)
    everyone = kits.participants()
    unknown = sorted(set(names) - set(everyone))
    if unknown or not names:
        raise ProvisionError(f"no kit for {', '.join(unknown) or '(none given)'} in {out}; participants: "
                             f"{', '.join(everyone)}")
    back_up_ca(out)
    state = json.loads(ca_state(out).read_text())
    for name in names:
        state.pop(name, None)
    tmp = ca_state(out).with_suffix(".json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, ca_state(out))
    prod = run_nvflare(out, yaml.safe_load((out / "project.yml").read_text()))
    for name in names:
        role, _ = everyone[name]
        if role == "server":
            retired = kits.server / DISABLED
            kits.server = prod / name
            keep_storage_in_kit(kits.server)
            if retired.is_file():      # the sites retired on the old server stay retired on the new one
                _write_private(kits.server / DISABLED, retired.read_bytes())
        elif role == "site":
            kits.sites[name] = prod / name
        else:
            kits.admins = {**(kits.admins or {kits.admin.name: kits.admin}), name: prod / name}
            kits.admin = kits.admins[next(iter(kits.admins))]
    (out / "kits.json").write_text(json.dumps(kits.to_dict(), indent=2))
    return kits


# ---- retiring a site ----------------------------------------------------------------------------------------
def retire_site(admin_kit: str | Path, name: str, undo: bool = False) -> dict:
    """Tell the running server (admin channel, mTLS) to refuse site `name` from now on: its session ends, and
    any registration under that name is rejected; kept in the server kit's disabled_clients.json across
    restarts. Not a revocation: the site's certificate stays valid (for a server that does not keep that file)
    until it expires. `undo` lets the site in again."""
    from .participants import check_site
    from .submit import open_session
    check_site(name)
    session = open_session(Path(admin_kit))
    try:
        return session.enable_client(name) if undo else session.disable_client(name)
    finally:
        session.close()
