"""A federation across separate hosts: the server, three sites of three organisations and an admin
workstation, each in a network namespace of its own (tests/deploy/netns.py), each holding only its own package
(`fedtune provision --packages`: one archive per participant) unpacked in its own folder, and a site its own
data; firewalled as docs/deploy.md says ("Running a federation across organisations"): the server accepts its
FL port from anywhere and its admin port only from the admin host; sites and the admin accept no inbound
connection. The server is provisioned with its address as its name (the kits dial it; its certificate names it).

Each role starts as its compose project (deploy/<role>/) starts it, minus the container: the image's entrypoint
(services/server/entrypoint.sh, services/client/entrypoint.sh, services/server/submit.sh) with the project's
environment (FEDTUNE_KIT, FEDTUNE_DATA, FEDTUNE_SITE, FEDTUNE_MIN_SITES, ...), so real `fedtune server`,
`fedtune client`, `fedtune submit` and `fedtune export` processes, real NVFlare provisioning and mTLS over the
namespaces' network. A job trains across them; the reachability a site has is checked; then a
fourth organisation gets a kit from the same root CA (`fedtune provision --add-site`, `fedtune package`), joins
without any other process being restarted, and takes part in a second job. Needs root, iproute2 and iptables
(skipped with the reason otherwise)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_helpers import REPO
from netns import Network, host_firewall

pytestmark = pytest.mark.slow

FL_PORT, ADMIN_PORT = 8002, 8003
LISTENER = 9000
SITES = {"lab-a": "acme", "hospital-b": "uni", "bank-c": "fin"}      # site -> organisation
NEW_SITE, NEW_ORG = "clinic-d", "med"
READY = {"server": "Server started", "client": "Successfully registered client"}
ENTRYPOINT = {role: ["bash", str(REPO / "services" / path)] for role, path in
              {"server": "server/entrypoint.sh", "site": "client/entrypoint.sh", "admin": "server/submit.sh"}.items()}


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


def unpack(packages: Path, name: str, host) -> Path:
    """What a participant is handed: its own archive, unpacked in its own folder; returns its kit folder."""
    subprocess.run(["tar", "-xzf", str(packages / f"{name}.tar.gz"), "-C", str(host.folder)], check=True)
    return host.folder / name


def key_files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.suffix == ".key" or p.name == "cert.json"}


def start_site(net: Network, site: str):
    host = net.hosts[site]
    return net.start(host, ENTRYPOINT["site"], "client", {"FEDTUNE_KIT": str(net.kits[site]),
                                                         "FEDTUNE_DATA": str(host.folder / "data"),
                                                         "FEDTUNE_SITE": site})


def submit(net: Network, trunk: Path, name: str, min_sites: int) -> dict:
    """The admin project's one-shot: submit, follow, download, export; returns the job's summary."""
    admin = net.hosts["admin"]
    log = admin.folder / f"submit-{name}.log"
    bundles = admin.folder / "bundles" / name
    bundles.mkdir(parents=True)
    env = {"FEDTUNE_KIT": str(net.kits["admin"]), "FEDTUNE_RESULTS": str(admin.folder / "results"),
           "FEDTUNE_BUNDLES": str(bundles), "FEDTUNE_MIN_SITES": str(min_sites), "FEDTUNE_KINDS": "sentiment",
           "FEDTUNE_PROFILE": "tiny", "FEDTUNE_SENTIMENT_MODE": "full", "FEDTUNE_JOB_TIMEOUT": "900",
           "FEDTUNE_SUBMIT_ARGS": f"--trunk {trunk} --name {name} --grace 60 --batch-size 16"}
    proc = net.start(admin, ENTRYPOINT["admin"], f"submit-{name}", env)
    assert proc.wait(timeout=1200) == 0, log.read_text()[-5000:]
    result = re.findall(r"^result: (.+)$", log.read_text(), re.M)
    assert result, log.read_text()[-3000:]
    assert (bundles / "sentiment" / "manifest.json").is_file(), "the admin exported a bundle"
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
        # the coordinator provisions and packages (its own machine; here: the test's folder, outside every host)
        pki, packages = root / "pki", root / "packages"
        fedtune("provision", "--out", str(pki), *[a for s, org in SITES.items() for a in ("--site", f"{s}@{org}")],
                "--server-name", server.ip, "--packages", str(packages))
        admin_name = Path(json.loads((pki / "kits.json").read_text())["admin"]).name
        net.kits = {"server": unpack(packages, server.ip, server), "admin": unpack(packages, admin_name, admin)}
        # each organisation's own data (synthetic shares of one data set, one per site)
        fedtune("prepare-data", "sentiment", "--out", str(root / "data"), "--sites", str(len(SITES) + 1),
                "--samples", "240")
        for k, (s, host) in enumerate(sites.items(), 1):
            net.kits[s] = unpack(packages, s, host)
            shutil.copytree(root / "data" / f"site-{k}", host.folder / "data")

        host_firewall(server, {FL_PORT: None, ADMIN_PORT: admin.ip})
        for host in [*sites.values(), admin]:
            host_firewall(host)

        proc = net.start(server, ENTRYPOINT["server"], "server", {"FEDTUNE_KIT": str(net.kits["server"])})
        wait_for(server.folder / "server.log", READY["server"], proc)
        clients = {s: start_site(net, s) for s in sites}
        for s, h in sites.items():
            wait_for(h.folder / "client.log", READY["client"], clients[s])
        net.listen(sites["lab-a"], LISTENER)   # a careless service on a site: still unreachable from outside
        yield net, pki, root, clients
    finally:
        net.close()


def test_each_host_holds_only_its_own_kit(federation):
    net, *_ = federation
    assert key_files(net.hosts["server"].folder) == {"server.key"}
    assert key_files(net.hosts["admin"].folder) == {"client.key"}    # NVFlare names the admin's key so too
    for s in SITES:
        kit = net.kits[s]
        assert key_files(net.hosts[s].folder) == {"client.key"}
        assert json.loads((kit / "startup/fed_client.json").read_text())["client"]["fqsn"] == s
        assert not (kit / "startup/fed_admin.json").exists()
    keys = [p.read_bytes() for p in net.root.glob("hosts/*/**/*.key")]
    assert len(keys) == len(set(keys)) == len(SITES) + 2, "every host its own, different private key"


def test_a_site_reaches_the_fl_port_only(federation):
    net, *_ = federation
    server, admin = net.hosts["server"], net.hosts["admin"]
    site1, site2 = net.hosts["lab-a"], net.hosts["hospital-b"]
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
    # the coordinator issues a kit from the same root CA and packages it; nobody else's kit changes
    issued = lambda: json.loads((pki / "kits.json").read_text())["sites"]
    before = issued()
    fedtune("provision", "--out", str(pki), "--add-site", f"{NEW_SITE}@{NEW_ORG}")
    fedtune("package", "--pki", str(pki), "--out", str(root / "packages-2"), "--participant", NEW_SITE)
    assert {s: k for s, k in issued().items() if s != NEW_SITE} == before, "the other kits stay as issued"
    host = net.add_host(NEW_SITE)
    kit = unpack(root / "packages-2", NEW_SITE, host)
    shutil.copytree(root / "data" / f"site-{len(SITES) + 1}", host.folder / "data")
    host_firewall(host)
    assert key_files(host.folder) == {"client.key"}
    assert (kit / "startup/rootCA.pem").read_bytes() == (net.kits["server"] / "startup/rootCA.pem").read_bytes()

    net.kits[NEW_SITE] = kit
    proc = start_site(net, NEW_SITE)
    wait_for(host.folder / "client.log", READY["client"], proc)
    summary = submit(net, tiny_text_trunk, "multihost-2", min_sites=len(SITES) + 1)
    assert set(summary["sites"]) == {*SITES, NEW_SITE}, summary
    # nobody else was restarted: the same server and client processes, still running, the server started once
    assert net.procs[0].pid == server_pid and net.procs[0].poll() is None
    assert (net.hosts["server"].folder / "server.log").read_text().count(READY["server"]) == 1
    for s, client in clients.items():
        assert client.poll() is None, f"{s} stopped"
    assert not net.can_connect(host, net.hosts["lab-a"].ip, LISTENER)
    assert not net.can_connect(host, net.hosts["server"].ip, ADMIN_PORT)
