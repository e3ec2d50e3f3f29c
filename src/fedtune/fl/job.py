"""Write an NVFlare job folder: the fedtune controller on the server, the Client API script on every site,
and, for private heads, an output filter on every site that drops `heads.` entries from what it sends.

The folder is plain JSON (written here rather than through FedJob's exporter, which copies imported
third-party modules into custom/):

    <name>/meta.json
    <name>/app/config/config_fed_server.json   workflow: fedtune.fl.controller.FedtuneController(job)
    <name>/app/config/config_fed_client.json   executor: ClientAPIExecutor, external process
                                               `python3 -u custom/fedtune_launch.py`
    <name>/app/custom/fedtune_launch.py        `from fedtune.fl.launch import main; main()`

(Shipping code in custom/ makes it a bring-your-own-code job, for which NVFlare skips the sites' class allow
list: neither the fedtune controller nor ClientAPIExecutor are on NVFlare's default list.)

The site script runs in a process of its own (Client API external-process mode), launched once per job by
`fedtune.fl.launch`: one process, or `torchrun` with one process per GPU where the site was started with
`fedtune client --gpus N` (the same job at every site; the process count is the site's setting). The
client puts its own interpreter first on PATH, so `python3` is the one fedtune is installed in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import JobConfig

LAUNCH_SHIM = '''"""fedtune site launcher (NVFlare Client API, external process): one process, or torchrun with one
process per GPU (`fedtune client --gpus N`); the logic lives in fedtune.fl.launch and fedtune.fl.client."""
from fedtune.fl.launch import main

main()
'''
LAUNCH_COMMAND = ["python3", "-u", "custom/fedtune_launch.py"]    # run in the site's app folder
PRIVATE_HEADS_REGEX = r"^heads\."
# a trainer busy with a large model on few cores can answer the liveness check late: be generous
HEARTBEAT_TIMEOUT = 120.0


def server_config(job: JobConfig) -> dict:
    return {"format_version": 2,
            "workflows": [{"id": "fedtune_controller", "path": "fedtune.fl.controller.FedtuneController",
                           "args": {"job": job.to_dict()}}],
            "components": []}


def client_config(job: JobConfig) -> dict:
    filters = []
    if job.private:
        filters.append({"tasks": ["train"], "filters": [
            {"path": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
             "args": {"exclude_vars": PRIVATE_HEADS_REGEX}}]})
    return {"format_version": 2,
            "executors": [{"tasks": ["*"], "executor": {
                "path": "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
                "args": {"execution_mode": "external_process", "command": LAUNCH_COMMAND,
                         "launch_once": True, "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                         "params_exchange_format": "numpy"}}}],
            "components": [],
            "task_data_filters": [],
            "task_result_filters": filters}


def build_job(job: JobConfig, out_dir: str | Path) -> Path:
    """Write the job into `out_dir/<job.name>` and return that folder (what `submit_job` takes)."""
    target = Path(out_dir).resolve() / job.name
    if target.exists():
        shutil.rmtree(target)
    (target / "app" / "config").mkdir(parents=True)
    (target / "app" / "custom").mkdir()
    meta = {"name": job.name, "resource_spec": {}, "min_clients": job.min_sites, "deploy_map": {"app": ["@ALL"]}}
    (target / "meta.json").write_text(json.dumps(meta, indent=2))
    (target / "app" / "config" / "config_fed_server.json").write_text(json.dumps(server_config(job), indent=2))
    (target / "app" / "config" / "config_fed_client.json").write_text(json.dumps(client_config(job), indent=2))
    (target / "app" / "custom" / "fedtune_launch.py").write_text(LAUNCH_SHIM)
    return target
