"""Failures a real federation must survive: a client with a kit from another provisioning, a site that dies
in the middle of a round."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from fedtune.fl.federation import LocalFederation, fedtune_command
from fedtune.fl.provision import provision
from fedtune.fl.submit import find_fedtune_dir

pytestmark = pytest.mark.slow


def test_client_with_foreign_kit_is_rejected_and_server_keeps_running(federation, site_data, make_job,
                                                                      tiny_antibody_trunk, tmp_path):
    kits = federation.kits
    # same names, same ports, different root CA
    foreign = provision(tmp_path / "other", list(site_data), fl_port=kits.fl_port, admin_port=kits.admin_port)
    proc = subprocess.run(fedtune_command("client", "--kit", str(foreign.sites["site-1"]), "--data",
                                          str(site_data["site-1"]), "--startup-deadline", "20"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "did not register" in proc.stderr and "root CA" in proc.stderr
    assert federation.procs["server"].poll() is None, "the server must keep running"
    # ... and still serves its own sites
    result = federation.run(make_job("fitness", tiny_antibody_trunk, rounds=1, name="after-reject"), timeout=600)
    assert json.loads((find_fedtune_dir(result) / "summary.json").read_text())["sites"].keys() == set(site_data)


def test_site_killed_mid_round_job_finishes_and_names_it(tmp_path, make_job, make_sites, tiny_antibody_trunk):
    sites = make_sites(tmp_path / "data", 3)
    killed = threading.Event()

    def kill_in_round_2():
        """SIGKILL site-3 as soon as the server hands it its round-2 task (stats, round 1, round 2)."""
        log = fed.workdir / "logs" / "server.log"
        while not killed.is_set():
            if log.read_text(errors="replace").count("sent task assignment to client. client_name:site-3") >= 3:
                fed.kill_site("site-3")
                killed.set()
            time.sleep(0.05)

    with LocalFederation(tmp_path / "fed", sites, quiet=True,
                         env={"NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT": "5"}) as fed:
        job = make_job("fitness", tiny_antibody_trunk, rounds=3, local_epochs=2, min_sites=2, grace=3,
                       round_timeout=300, name="kill")
        threading.Thread(target=kill_in_round_2, daemon=True).start()
        result = fed.run(job, timeout=300)
        server_log = (fed.workdir / "logs" / "server.log").read_text()
    assert killed.is_set()
    summary = json.loads((find_fedtune_dir(result) / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert sorted(summary["rounds"][0]["sites"]) == ["site-1", "site-2", "site-3"]
    assert summary["missing"]["2"] == ["site-3"] and summary["missing"]["3"] == ["site-3"]
    assert sorted(summary["sites"]) == ["site-1", "site-2"]
    assert "no answer from ['site-3']" in server_log
