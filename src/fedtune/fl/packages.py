"""One archive per participant: what the coordinator hands to each organisation.

    <dir>/<name>.tar.gz   (mode 0600)   <name>/startup/   the kit's certificate, key, root CA certificate, config
                                        <name>/local/     its local settings (*.default, samples)
                                        <name>/transfer/  empty (the admin's downloads, a site's job files)
                                        <name>/README.md  how to run it; the root CA fingerprint to check

Nothing else goes in: never the root CA state (state/cert.json), never another participant's key, never what a
used kit gathered (job storage, logs, runs, downloads), no symlink or special file. The server kit's
local/resources.json is left out (it names storage paths of the coordinator's machine: `fedtune server`
writes it again inside the kit). Every archive is checked after it is written.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

from .pki import PkiError, kit_identity, root_fingerprint
from .provision import Kits

PARTS = ("startup", "local")
LEFT_OUT = {("server", "local/resources.json")}
PRIVATE_KEY_MARK = b"PRIVATE KEY-----"

COMMANDS = {
    "server": """\
    fedtune server --kit {name}

Open the federated-learning port {fl_port}/tcp to every site, and the admin port {admin_port}/tcp only to
where the admins sit. The server's name as the sites reach it is `{server}` (its certificate's CN/SANs).

Containers: the compose project deploy/server/ of the same fedtune release (its header lists every setting),
run by the coordinator alone, with this folder unpacked beside its compose.yaml:

    cd deploy/server && tar -xzf {name}.tar.gz
    FEDTUNE_KIT=./{name} FEDTUNE_FL_PORT={fl_port} FEDTUNE_ADMIN_PORT={admin_port} docker compose up -d

Kubernetes (the coordinator's own cluster; the kit goes into a Secret, see the header of the kustomization):

    kubectl apply -k k8s/roles/server
""",
    "site": """\
    fedtune client --kit {name} --data /path/to/{name}-data

The site only opens an outbound connection to {server}:{fl_port} (the server's federated-learning port);
nothing needs to reach the site. Its data never leaves it.

Containers: the compose project deploy/site/ of the same fedtune release (its header lists every setting),
run by this organisation alone, with this folder and the site's data beside its compose.yaml:

    cd deploy/site && tar -xzf {name}.tar.gz
    FEDTUNE_KIT=./{name} FEDTUNE_DATA=./data FEDTUNE_SITE={name} FEDTUNE_FL_PORT={fl_port} docker compose up -d

Kubernetes (this organisation's own cluster; the kit goes into a Secret, see the header of the kustomization):

    kubectl apply -k k8s/roles/site
""",
    "admin": """\
    fedtune submit fitness --admin-kit {name} --out results --min-sites <number of sites>
    fedtune export --result results/<job id> --out bundle

The admin connects to {server}:{admin_port} (the server's admin port) only.

Containers: the compose project deploy/admin/ of the same fedtune release (its header lists every setting):

    cd deploy/admin && tar -xzf {name}.tar.gz
    FEDTUNE_KIT=./{name} FEDTUNE_MIN_SITES=<number of sites> docker compose run --rm submitter

Kubernetes (the kit goes into a Secret, see the header of the kustomization):

    kubectl apply -k k8s/roles/admin
""",
}


def readme(kits: Kits, name: str, role: str, org: str, fingerprint: str) -> str:
    what = {"server": "the federation's server", "site": f"site `{name}`", "admin": f"admin `{name}`"}[role]
    cmd = COMMANDS[role].format(name=name, server=kits.server_name, fl_port=kits.fl_port,
                                admin_port=kits.admin_port)
    return f"""# fedtune startup kit: {what} (organisation `{org}`)

This archive holds only this participant's kit: its certificate and private key (startup/*.key: keep it on
this organisation's machines, readable by the service account only), the federation's root CA certificate,
and its configuration. It holds no other participant's key and not the root CA key.

Before the first start, check that the root CA certificate is the federation's: compare this fingerprint
with the one the coordinator gave you over another channel (phone, signed mail):

    {fingerprint}
    (fedtune certs --kit {name} prints it, with the expiry of every certificate in the kit)

Unpack (keeps the modes: the key stays 0600):

    tar -xzf {name}.tar.gz

Run:

{cmd}
Certificates expire: `fedtune certs --kit {name}` shows when; `fedtune server|client|submit` warn 30 days
before. There is no revocation in NVFlare: ask the coordinator for a new kit before expiry.
"""


def _add(tar: tarfile.TarFile, arcname: str, data: bytes | None, mode: int) -> None:
    info = tarfile.TarInfo(arcname)
    info.mode, info.mtime = mode, int(time.time())
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def kit_files(kit: Path, role: str) -> list[tuple[str, Path]]:
    """(path inside the kit, file) for every regular file of startup/ and local/, minus LEFT_OUT."""
    files = []
    for part in PARTS:
        for path in sorted((kit / part).rglob("*")):
            rel = path.relative_to(kit).as_posix()
            if path.is_symlink():
                raise PkiError(f"{path}: a symlink in a kit; not packaged")
            if path.is_file() and (role, rel) not in LEFT_OUT:
                files.append((rel, path))
            elif not path.is_dir() and not path.is_file():
                raise PkiError(f"{path}: not a regular file; not packaged")
    return files


def write_package(kits: Kits, name: str, out_dir: Path) -> Path:
    role, kit = kits.participants()[name]
    _, _, org = kit_identity(kit)
    target = out_dir / f"{name}.tar.gz"
    if target.exists():
        raise PkiError(f"{target} exists: packages are written into a new or empty folder")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, name, None, 0o700)
        for part in (*PARTS, "transfer"):
            _add(tar, f"{name}/{part}", None, 0o700)
        for rel, path in kit_files(kit, role):
            data = path.read_bytes()
            secret = rel.endswith(".key") or PRIVATE_KEY_MARK in data
            plain = 0o755 if path.stat().st_mode & 0o100 else 0o644
            _add(tar, f"{name}/{rel}", data, 0o600 if secret else plain)
        _add(tar, f"{name}/README.md", readme(kits, name, role, org, root_fingerprint(kit)).encode(), 0o644)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    check_package(target, own_key=own_key(kit, role))
    return target


def own_key(kit: Path, role: str) -> bytes:
    return (kit / "startup" / ("server.key" if role == "server" else "client.key")).read_bytes()


def private_keys_in(archive: Path) -> dict[str, bytes]:
    """Every member of `archive` that holds a PEM private key or a `pri_key` entry (NVFlare's CA state)."""
    found = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                data = tar.extractfile(m).read()
                if PRIVATE_KEY_MARK in data or b"pri_key" in data:
                    found[m.name] = data
    return found


def check_package(archive: Path, own_key: bytes) -> None:
    """The archive holds exactly one private key, the participant's own (raises PkiError otherwise)."""
    keys = private_keys_in(archive)
    if list(keys.values()) != [own_key]:
        raise PkiError(f"{archive}: holds private key material other than the participant's own key "
                       f"({sorted(keys)}); do not hand it out")


def write_packages(kits: Kits, out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """One archive per participant (all, or `names`) into `out_dir` (created 0700)."""
    out_dir = Path(out_dir).resolve()
    everyone = kits.participants()
    unknown = sorted(set(names or []) - set(everyone))
    if unknown:
        raise PkiError(f"no kit for {', '.join(unknown)}; participants: {', '.join(everyone)}")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [write_package(kits, n, out_dir) for n in (names or list(everyone))]
