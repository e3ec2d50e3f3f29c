"""A federation across separate hosts: the server, three sites and an admin workstation each in a network
namespace of its own (tests/deploy/netns.py), each with only its own kit (and data) copied into its own folder,
firewalled as docs/deploy.md says ("Running a federation across organisations"): the server accepts its FL port
from anywhere and its admin port only from the admin host; sites and the admin accept no inbound connection.

Real processes per host (`fedtune server`, `fedtune client`, `fedtune submit`), real NVFlare provisioning and
mTLS over the namespaces' network. A job trains across them; the reachability a site has is checked; then a
fourth site gets a kit signed by the same root CA, joins without any other process being restarted, and takes
part in a second job. Needs root, iproute2 and iptables (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import Network, host_firewall

pytestmark = pytest.mark.slow

FL_PORT, ADMIN_PORT = 8002, 8003
LISTENER = 9000
SITES = ["site-1", "site-2", "site-3"]
NEW_SITE = "site-4"
READY = {"server": "Server started", "client": "Successfully registered client"}


def fedtune(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "fedtune", *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"fedtune {' '.join(args)}: {res.stdout[-3000:]}{res.stderr[-3000:]}"
    return res.stdout


def wait_for(log: Path, marker: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and marker in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"exited ({proc.returncode}) before '{marker}':\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no '{marker}' in {log} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def copy_kit(kit: Path, dst: Path, server: bool = False) -> None:
    """What a participant gets handed: its own kit folder only."""
    shutil.copytree(kit, dst, symlinks=True)
    if server:   # job storage paths of the provisioning folder; the server writes its own at start
        (dst / "local" / "resources.json").unlink(missing_ok=True)


def key_files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.suffix == ".key" or p.name == "cert.json"}


def add_site(pki: Path, server_ip: str) -> Path:
    """A kit for NEW_SITE signed by the federation's root CA: `fedtune provision --add-site` where this fedtune
    has it, else a forced re-provisioning (NVFlare keeps the root CA of the workspace's state/)."""
    if "--add-site" in fedtune("provision", "--help"):
        fedtune("provision", "--out", str(pki), "--add-site", NEW_SITE)
    else:
        fedtune("provision", "--out", str(pki), "--sites", str(len(SITES) + 1), "--server-name", server_ip,
                "--force")
    return Path(json.loads((pki / "kits.json").read_text())["sites"][NEW_SITE])


def submit(net: Network, trunk: Path, name: str, min_sites: int) -> dict:
    admin = net.hosts["admin"]
    log = admin.folder / f"submit-{name}.log"
    proc = net.start(admin, ["submit", "sentiment", "--admin-kit", str(admin.folder / "kit"),
                             "--out", str(admin.folder / "results"), "--name", name, "--rounds", "1",
                             "--local-epochs", "1", "--trunk", str(trunk), "--trunk-mode", "full",
                             "--min-sites", str(min_sites), "--grace", "60", "--batch-size", "16",
                             "--timeout", "900"], f"submit-{name}")
    assert proc.wait(timeout=1200) == 0, log.read_text()[-5000:]
    result = re.findall(r"^result: (.+)$", log.read_text(), re.M)
    assert result, log.read_text()[-3000:]
    from fedtune.fl.submit import find_fedtune_dir
    return json.loads((find_fedtune_dir(Path(result[-1])) / "summary.json").read_text())


@pytest.fixture(scope="module")
def federation(tmp_path_factory, tiny_text_trunk):
    why = Network.unavailable()
    if why:
        pytest.skip(f"multi-host test needs network namespaces: {why}")
    root = tmp_path_factory.mktemp("multihost")
    net = Network(root).up()
    try:
        server = net.add_host("server")
        sites = {s: net.add_host(s) for s in SITES}
        admin = net.add_host("admin")
        # the coordinator provisions (its own machine; here: the test's folder, outside every host folder)
        pki = root / "pki"
        fedtune("provision", "--out", str(pki), "--sites", str(len(SITES)), "--server-name", server.ip)
        kits = json.loads((pki / "kits.json").read_text())
        fedtune("prepare-data", "sentiment", "--out", str(root / "data"), "--sites", str(len(SITES) + 1),
                "--samples", "240")
        copy_kit(Path(kits["server"]), server.folder / "kit", server=True)
        copy_kit(Path(kits["admin"]), admin.folder / "kit")
        for s, host in sites.items():
            copy_kit(Path(kits["sites"][s]), host.folder / "kit")
            shutil.copytree(root / "data" / s, host.folder / "data")

        host_firewall(server, {FL_PORT: None, ADMIN_PORT: admin.ip})
        for host in [*sites.values(), admin]:
            host_firewall(host)

        proc = net.start(server, ["server", "--kit", str(server.folder / "kit")], "server")
        wait_for(server.folder / "server.log", READY["server"], proc)
        clients = {s: net.start(h, ["client", "--kit", str(h.folder / "kit"), "--data", str(h.folder / "data")],
                                "client") for s, h in sites.items()}
        for s, h in sites.items():
            wait_for(h.folder / "client.log", READY["client"], clients[s])
        net.listen(sites["site-1"], LISTENER)   # a careless service on a site: still unreachable from outside
        yield net, pki, root, clients
    finally:
        net.close()


def test_each_host_holds_only_its_own_kit(federation):
    net, *_ = federation
    assert key_files(net.hosts["server"].folder) == {"server.key"}
    assert key_files(net.hosts["admin"].folder) == {"client.key"}    # NVFlare names the admin's key so too
    for s in SITES:
        folder = net.hosts[s].folder
        assert key_files(folder) == {"client.key"}
        assert json.loads((folder / "kit/startup/fed_client.json").read_text())["client"]["fqsn"] == s
        assert not (folder / "kit/startup/fed_admin.json").exists()


def test_a_site_reaches_the_fl_port_only(federation):
    net, *_ = federation
    server, admin = net.hosts["server"], net.hosts["admin"]
    site1, site2 = net.hosts["site-1"], net.hosts["site-2"]
    assert net.can_connect(site1, site1.ip, LISTENER), "the listener answers on its own host"
    for src in (site1, site2):
        assert net.can_connect(src, server.ip, FL_PORT), f"{src.name} -> FL port"
        assert not net.can_connect(src, server.ip, ADMIN_PORT), f"{src.name} reached the admin port"
    assert not net.can_connect(site2, site1.ip, LISTENER), "a site reached another site"
    assert not net.can_connect(server, site1.ip, LISTENER), "the server reached into a site"
    assert not net.can_connect(admin, site1.ip, LISTENER), "the admin host reached into a site"
    assert net.can_connect(admin, server.ip, ADMIN_PORT), "admin -> admin port"


def test_a_job_trains_across_the_hosts(federation, tiny_text_trunk):
    net, *_ = federation
    summary = submit(net, tiny_text_trunk, "multihost-1", min_sites=len(SITES))
    assert set(summary["sites"]) == set(SITES), summary


def test_a_new_site_joins_without_restarting_the_others(federation, tiny_text_trunk):
    net, pki, root, clients = federation
    server_pid = net.procs[0].pid
    kit = add_site(pki, net.hosts["server"].ip)
    host = net.add_host(NEW_SITE)
    copy_kit(kit, host.folder / "kit")
    shutil.copytree(root / "data" / NEW_SITE, host.folder / "data")
    host_firewall(host)
    assert key_files(host.folder) == {"client.key"}

    proc = net.start(host, ["client", "--kit", str(host.folder / "kit"), "--data", str(host.folder / "data")],
                     "client")
    wait_for(host.folder / "client.log", READY["client"], proc)
    summary = submit(net, tiny_text_trunk, "multihost-2", min_sites=len(SITES) + 1)
    assert set(summary["sites"]) == {*SITES, NEW_SITE}, summary
    # nobody else was restarted: the same server and client processes, each registered exactly once
    assert net.procs[0].pid == server_pid and net.procs[0].poll() is None
    for s, client in clients.items():
        assert client.poll() is None, f"{s} stopped"
        assert (net.hosts[s].folder / "client.log").read_text().count(READY["client"]) == 1, s
    assert not net.can_connect(host, net.hosts["site-1"].ip, LISTENER)
    assert not net.can_connect(host, net.hosts["server"].ip, ADMIN_PORT)
