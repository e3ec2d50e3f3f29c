"""A job never loses its training, over a real federation: a site killed in the final phase still leaves a
downloadable, exportable result; a server killed mid-job is restarted and the job resumes from its last
round's checkpoint and finishes."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fedtune.bundle import load_bundle
from fedtune.fl.export import export_bundle
from fedtune.fl.federation import LocalFederation
from fedtune.fl.resume import build_job_from
from fedtune.fl.submit import JobFailed, find_fedtune_dir, open_session, wait_for_sites

pytestmark = pytest.mark.slow

TASK_SENT = "sent task assignment to client. client_name:{}"


def kill_when(fed: LocalFederation, site: str, tasks: int, done: threading.Event) -> None:
    """SIGKILL `site` as soon as the server has handed it its `tasks`-th task."""
    log = fed.workdir / "logs" / "server.log"
    while not done.is_set():
        if log.read_text(errors="replace").count(TASK_SENT.format(site)) >= tasks:
            fed.kill_site(site)
            done.set()
        time.sleep(0.05)


def wait_for_round(fed: LocalFederation, job_id: str, rnd: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in fed.kits.server.glob(f"{job_id}/app_server/fedtune/summary.json"):
            if json.loads(path.read_text()).get("last_round", 0) >= rnd:
                return
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish round {rnd}")


def test_final_phase_failure_exports_and_server_restart_resumes(tmp_path, make_job, make_sites, tiny_antibody_trunk):
    sites = make_sites(tmp_path / "data", 3)
    with LocalFederation(tmp_path / "fed", sites, quiet=True,
                         env={"NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT": "5"}) as fed:
        # 1. site-3 dies when it gets the final task (stats, round 1, round 2, final): with min_sites=3 the
        #    final phase cannot close, the job fails, yet its result downloads and exports round 2
        killed = threading.Event()
        threading.Thread(target=kill_when, args=(fed, "site-3", 4, killed), daemon=True).start()
        with pytest.raises(JobFailed) as failed:
            fed.run(make_job("fitness", tiny_antibody_trunk, rounds=2, min_sites=3, round_timeout=45,
                             name="final-dies"), timeout=900)
        assert killed.is_set()
        partial = failed.value.result
        assert partial is not None, str(failed.value)
        summary = json.loads((find_fedtune_dir(partial) / "summary.json").read_text())
        assert summary["status"] == "failed" and summary["last_round"] == 2
        assert "final" in summary["error"]
        bundle = load_bundle(export_bundle(partial, tmp_path / "partial-bundle"))
        assert "round, 2 of 2" in bundle.manifest["provenance"]["partial"]

        # 2. a job on site-1 and site-2; the server is killed after round 1 and started again; a new job
        #    starts from the checkpoint the dead server left in its workspace and finishes
        job = make_job("fitness", tiny_antibody_trunk, rounds=3, min_sites=2, grace=1, name="crashes")
        session = open_session(fed.kits.admin)
        try:
            wait_for_sites(session, 2)
            job_id = session.submit_job(str(build_job_from(job, fed.workdir / "jobs")))
        finally:
            session.close()
        wait_for_round(fed, job_id, 1)
        fed.restart_server()
        server_copy = fed.kits.server / job_id / "app_server" / "fedtune"
        assert json.loads((server_copy / "summary.json").read_text())["status"] == "running"
        resumed = fed.run(make_job("fitness", tiny_antibody_trunk, rounds=2, min_sites=2, grace=1, name="resumed"),
                          timeout=900, init_from=server_copy)
    summary = json.loads((find_fedtune_dir(resumed) / "summary.json").read_text())
    assert summary["status"] == "complete" and [r["round"] for r in summary["rounds"]] == [1, 2]
    assert "job crashes" in summary["init_from"] and "round " in summary["init_from"]
    bundle = load_bundle(export_bundle(resumed, tmp_path / "resumed-bundle"))
    assert bundle.manifest["provenance"]["init_from"] == summary["init_from"]
    assert "partial" not in bundle.manifest["provenance"]
