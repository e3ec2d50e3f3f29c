"""Write an NVFlare job folder: the fedtune controller on the server, the Client API script on every site,
and, for private heads, an output filter on every site that drops `heads.` entries from what it sends.

The folder is plain JSON + one tiny script (written here rather than through FedJob's exporter, which
copies imported third-party modules into custom/):

    <name>/meta.json
    <name>/app/config/config_fed_server.json   workflow: fedtune.fl.controller.FedtuneController(job)
    <name>/app/config/config_fed_client.json   executor: ClientAPIExecutor(custom/fedtune_client.py)
    <name>/app/custom/fedtune_client.py        `from fedtune.fl.client import main; main()`
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import JobConfig

CLIENT_SHIM = '''"""fedtune site training script (runs under the NVFlare Client API); the logic lives in fedtune.fl.client."""
from fedtune.fl.client import main

main()
'''
PRIVATE_HEADS_REGEX = r"^heads\."


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
                "args": {"execution_mode": "in_process", "task_script_path": "fedtune_client.py",
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
    (target / "app" / "custom" / "fedtune_client.py").write_text(CLIENT_SHIM)
    return target
