"""Sites join a running federation (real NVFlare, mTLS over loopback): one with a kit added from the same root
CA (`provision --add-site`), one through request-and-sign with a key that never left it. Neither the server
nor the first two sites restart, and a job that needs all four runs with them under their own names."""

from __future__ import annotations

import json
import subprocess

import pytest

from fedtune.fl.csr import assemble, request, sign
from fedtune.fl.federation import READY, LocalFederation, fedtune_command
from fedtune.fl.pki import root_fingerprint
from fedtune.fl.submit import find_fedtune_dir

pytestmark = pytest.mark.slow

FIRST = ["lab-a", "hospital-b"]
LATER = ["lab-c", "lab-d"]


def test_sites_join_a_running_federation(tmp_path, monkeypatch, make_sites, make_job, tiny_antibody_trunk):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))       # NVFlare's request/approval audit records
    data = dict(zip(FIRST + LATER, make_sites(tmp_path / "data", 4).values()))
    with LocalFederation(tmp_path / "fed", {s: data[s] for s in FIRST}, quiet=True) as fed:
        pids = {s: fed.procs[s].pid for s in ["server", *FIRST]}

        # lab-c: the coordinator issues a kit from the same root CA, no other kit changes
        p = subprocess.run(fedtune_command("provision", "--out", str(fed.kits.root), "--add-site", "lab-c@neworg"),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        kit_c = json.loads((fed.kits.root / "kits.json").read_text())["sites"]["lab-c"]
        fed.start_site("lab-c", data["lab-c"], kit=kit_c)

        # lab-d: its own key and request; the coordinator signs; the site assembles its kit
        site_d = tmp_path / "lab-d-host"
        zip_d = request("lab-d", "otherorg", site_d / "request")
        signed = sign(zip_d, fed.kits.root, tmp_path / "inbox" / "lab-d.signed.zip")
        kit_d = assemble(signed, site_d / "request", site_d / "kit", root_fingerprint(fed.kits.server))
        fed.start_site("lab-d", data["lab-d"], kit=kit_d)

        for s in LATER:
            fed._wait_for(s, READY["client"], 180)
        job_ids = []
        result = fed.run(make_job("fitness", tiny_antibody_trunk, name="four-sites", rounds=1, min_sites=4),
                         timeout=900, on_submit=job_ids.append)
        summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
        assert sorted(summary["sites"]) == sorted(FIRST + LATER)
        for s in ["server", *FIRST]:                 # never restarted
            assert fed.procs[s].poll() is None and fed.procs[s].pid == pids[s]

        key = (site_d / "request" / "lab-d.key").read_bytes()
        holders = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and key in p.read_bytes()]
        assert holders and all(p.is_relative_to(site_d) for p in holders), holders


def test_named_server_site_and_admin_of_different_organisations(tmp_path, make_sites):
    """A server named for its DNS name (localhost as an extra SAN), a site of `acme` and an admin of `uni`: the
    site registers with its own organisation and the admin logs in under its own name (not the default one)."""
    from fedtune.fl.federation import free_port
    from fedtune.fl.participants import ProjectSpec, admin, site
    from fedtune.fl.process import client_command, server_command
    from fedtune.fl.provision import provision
    from fedtune.fl.submit import open_session

    data = make_sites(tmp_path / "data", 1)["site-1"]
    fed = LocalFederation(tmp_path / "fed", {"lab-a": data}, quiet=True)
    fed.kits = provision(tmp_path / "fed" / "pki", spec=ProjectSpec(
        sites=[site("lab-a@acme")], server_name="localhost", server_org="coord",
        admins=[admin("carol@uni.edu@uni")], fl_port=free_port(), admin_port=free_port()))
    assert "org=coord" in server_command(fed.kits.server) and "org=acme" in client_command(fed.kits.sites["lab-a"], "lab-a")
    try:
        fed._start("server", ["server", "--kit", str(fed.kits.server)])
        fed._wait_for("server", READY["server"], 120)
        fed.start_site("lab-a", data)
        fed._wait_for("lab-a", READY["client"], 120)
        session = open_session(fed.kits.admins["carol@uni.edu"])
        try:
            clients = [c.name for c in session.get_system_info().client_info]
        finally:
            session.close()
        assert clients == ["lab-a"]

        # retiring lab-a: the server refuses it from now on, a restarted lab-a included (its cert is still valid)
        carol = str(fed.kits.admins["carol@uni.edu"])
        p = subprocess.run(fedtune_command("site", "retire", "lab-a", "--admin-kit", carol), capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0 and "retired" in p.stdout, p.stderr
        fed.kill_site("lab-a")
        fed.start_site("lab-a", data)
        fed._wait_for("server", "Reject disabled client registration: lab-a", 120)
        session = open_session(fed.kits.admins["carol@uni.edu"])
        try:
            assert [c.name for c in session.get_system_info().client_info] == []
        finally:
            session.close()
        disabled = json.loads((fed.kits.server / "disabled_clients.json").read_text())
        assert disabled["disabled_clients"] == ["lab-a"]
        p = subprocess.run(fedtune_command("site", "retire", "lab-a", "--admin-kit", carol, "--undo"),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "enabled again" in p.stdout, p.stderr
        p = subprocess.run(fedtune_command("site", "retire", "../x", "--admin-kit", carol), capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 2
    finally:
        fed.stop()


def test_the_server_certificate_is_rotated_without_new_site_kits(tmp_path, make_sites):
    """`provision --reissue <server>`: the server restarts from its new kit (new key, same root CA, same name);
    the sites keep their kits. A running site's session token was signed with the old server key: the new
    server rejects it ("invalid auth token signature") and NVFlare does not re-register on its own, so every
    site process is restarted (same kit) after a server rotation."""
    data = make_sites(tmp_path / "data", 1)["site-1"]
    with LocalFederation(tmp_path / "fed", {"lab-a": data}, quiet=True) as fed:
        site_pid, site_kit = fed.procs["lab-a"].pid, fed.kits.sites["lab-a"]
        p = subprocess.run(fedtune_command("provision", "--out", str(fed.kits.root), "--reissue", fed.kits.server_name),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        new = json.loads((fed.kits.root / "kits.json").read_text())
        assert new["server"] != str(fed.kits.server) and new["sites"]["lab-a"] == str(site_kit)
        fed.kill_site("server")
        fed._start("server", ["server", "--kit", new["server"]])
        fed._wait_for("server", "invalid auth token signature", 180)     # the old session's token
        assert fed.procs["lab-a"].pid == site_pid
        fed.kill_site("lab-a")
        fed.start_site("lab-a", data)                                    # the same, unchanged kit
        fed._wait_for("lab-a", READY["client"], 180, seen=1)             # registered with the new server
        assert json.loads((fed.kits.root / "kits.json").read_text())["sites"]["lab-a"] == str(site_kit)
