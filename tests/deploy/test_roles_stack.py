"""The role projects on a real Docker engine: the coordinator's `deploy/server`, two organisations'
`deploy/site` and the admin's `deploy/admin`, each a compose project of its own (its own network) started from
its own folder holding only its own package (`fedtune provision --packages`) and, for a site, its own data. The
kits name the server `fl.example.test`, which no DNS knows: the sites and the admin pin it to the host's
address with `compose.no-dns.yaml`, as a party without DNS for the server does; they reach the server only
through the ports its project publishes. The admin's one-shot trains a job across both sites and exports a
bundle. Then each container's mounts, networks and published ports are checked.

Markers docker and slow; needs root, dockerd and debootstrap (scripts/ci-deps.sh), like test_compose_stack.py.
Builds the images with scripts/build-images.sh --cpu (cached after the first build)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_helpers import REPO, unavailable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVER = "fl.example.test"
SITES = ["site-1", "site-2"]
ADMIN = "admin@fedtune.local"
UID = 10001          # the images' user: owner of what each party mounts


def sh(cmd: list[str], env: dict, cwd: Path = REPO, timeout: float = 900, check: bool = True):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{(res.stdout + res.stderr)[-5000:]}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def host_address() -> str:
    """An address of this machine that containers on any compose network can reach (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))          # no packet is sent: only picks the outgoing interface
        return s.getsockname()[0]


@pytest.fixture(scope="module")
def engine(prebuilt_images) -> dict:
    missing = [t for t in ("docker", "dockerd", "debootstrap") if not shutil.which(t)]
    if missing or os.geteuid() != 0:
        unavailable(f"the Docker engine cannot be started here (missing: {missing or 'root'})")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTUNE_", "DOCKER_", "COMPOSE_"))}
    res = sh(["bash", "scripts/docker-engine.sh", "start"], env, timeout=1200)
    for line in res.stdout.splitlines():
        key, value = line[len("export "):].split("=", 1)
        env[key] = value
    sh(["bash", "scripts/build-images.sh", "--cpu"], env, timeout=3600)
    return env


def unpack(packages: Path, name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(packages / f"{name}.tar.gz"), "-C", str(folder)], check=True)
    return folder / name


def chown_tree(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        os.chown(p, UID, UID, follow_symlinks=False)


def inspect(env: dict, project: str) -> list[dict]:
    ids = sh(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"], env).stdout.split()
    return json.loads(sh(["docker", "inspect", *ids], env).stdout) if ids else []


def test_each_party_runs_its_own_project_with_its_own_package(engine, tmp_path):
    fedtune = [sys.executable, "-m", "fedtune"]
    fl_port, admin_port, ip = free_port(), free_port(), host_address()
    pki, packages = tmp_path / "coordinator" / "pki", tmp_path / "coordinator" / "packages"
    sh([*fedtune, "provision", "--out", str(pki), "--sites", str(len(SITES)), "--server-name", SERVER,
        "--fl-port", str(fl_port), "--admin-port", str(admin_port), "--packages", str(packages)], engine)
    sh([*fedtune, "prepare-data", "sentiment", "--out", str(tmp_path / "demo-data"), "--sites", str(len(SITES)),
        "--samples", "150"], engine)
    parties = {"server": tmp_path / "server", "admin": tmp_path / "admin", **{s: tmp_path / s for s in SITES}}
    kits = {"server": unpack(packages, SERVER, parties["server"]), "admin": unpack(packages, ADMIN, parties["admin"])}
    for s in SITES:
        kits[s] = unpack(packages, s, parties[s])
        shutil.copytree(tmp_path / "demo-data" / s, parties[s] / "data")
    for sub in ("results", "bundles"):
        (parties["admin"] / sub).mkdir()
    for folder in parties.values():
        chown_tree(folder)

    base = {**engine, "FEDTUNE_FL_PORT": str(fl_port), "FEDTUNE_ADMIN_PORT": str(admin_port)}
    pinned = {"FEDTUNE_SERVER": SERVER, "FEDTUNE_SERVER_IP": ip}
    projects = {party: f"fedtune-roles-{party}" for party in parties}
    compose = lambda party, *files: ["docker", "compose", "-p", projects[party],
                                     *[a for f in ("compose.yaml", *files) for a in ("-f", f)]]
    try:
        sh([*compose("server"), "up", "-d", "--wait"],
           {**base, "FEDTUNE_KIT": str(kits["server"]), "FEDTUNE_ADMIN_ADDR": ip}, cwd=REPO / "deploy/server")
        for s in SITES:
            sh([*compose(s, "compose.cpu.yaml", "compose.no-dns.yaml"), "up", "-d"],
               {**base, **pinned, "FEDTUNE_KIT": str(kits[s]), "FEDTUNE_DATA": str(parties[s] / "data"),
                "FEDTUNE_SITE": s}, cwd=REPO / "deploy/site")
        res = sh([*compose("admin", "compose.no-dns.yaml"), "run", "--rm", "submitter"],
                 {**engine, **pinned, "FEDTUNE_KIT": str(kits["admin"]),
                  "FEDTUNE_RESULTS": str(parties["admin"] / "results"),
                  "FEDTUNE_BUNDLES": str(parties["admin"] / "bundles"), "FEDTUNE_MIN_SITES": str(len(SITES)),
                  "FEDTUNE_KINDS": "sentiment", "FEDTUNE_PROFILE": "tiny"}, cwd=REPO / "deploy/admin", timeout=1800)
        job = re.findall(r"^result: /results/(\S+)$", res.stdout, re.M)
        assert job, res.stdout[-3000:]
        summary = next((parties["admin"] / "results" / job[-1]).rglob("summary.json"))
        assert set(json.loads(summary.read_text())["sites"]) == set(SITES)
        assert (parties["admin"] / "bundles" / "sentiment" / "manifest.json").is_file()

        server = inspect(engine, projects["server"])
        assert len(server) == 1, "the server project runs the FL server alone (no serving profile)"
        published = {p: [(b["HostIp"], b["HostPort"]) for b in bs]      # the image EXPOSEs 8002/8003 too
                     for p, bs in server[0]["NetworkSettings"]["Ports"].items() if bs}
        assert published == {f"{fl_port}/tcp": [("0.0.0.0", str(fl_port))],
                             f"{admin_port}/tcp": [(ip, str(admin_port))]}
        server_nets = set(server[0]["NetworkSettings"]["Networks"])
        for s in SITES:
            [site] = inspect(engine, projects[s])
            assert site["State"]["Running"], s
            mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in site["Mounts"]}
            assert mounts == {"/kit": (str(kits[s]), True), "/data": (str(parties[s] / "data"), False)}, s
            assert not any(site["NetworkSettings"]["Ports"].values()), f"{s} publishes a port"
            assert not set(site["NetworkSettings"]["Networks"]) & server_nets, f"{s} shares a network"
            other = [x for x in SITES if x != s]
            for o in other:
                assert not set(site["NetworkSettings"]["Networks"]) & \
                    set(inspect(engine, projects[o])[0]["NetworkSettings"]["Networks"]), f"{s} and {o}"
    finally:
        for party, project in projects.items():
            role = party if party in ("server", "admin") else "site"
            sh(["docker", "compose", "-p", project, "down", "-v", "--remove-orphans", "-t", "10"],
               {**base, **pinned, "FEDTUNE_MIN_SITES": "1"}, cwd=REPO / "deploy" / role, check=False)
