"""What `build_job` writes for NVFlare (fast: no federation, no trunk; the federation tests run these folders)."""

from __future__ import annotations

import json

from fedtune.fl.config import JobConfig
from fedtune.fl.job import TASK_REQUEST_INTERVAL, build_job


def test_sites_ask_for_their_next_task_after_half_a_second_not_nvflares_two(tmp_path):
    job = JobConfig(kind="sentiment", name="interval", trunk={"source": "unused", "mode": "frozen"})
    server = json.loads((build_job(job, tmp_path) / "app" / "config" / "config_fed_server.json").read_text())
    # NVFlare reads `server.task_request_interval` from the job's server config and sends it to every site
    # with each task and each "no task yet" (its default, 2 s, idles between every two phases of a job)
    assert server["server"] == {"task_request_interval": TASK_REQUEST_INTERVAL} and TASK_REQUEST_INTERVAL == 0.5
    assert server["workflows"][0]["path"] == "fedtune.fl.controller.FedtuneController"
