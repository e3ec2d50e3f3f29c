"""Write an NVFlare job folder: the fedtune controller on the server, the Client API script on every site,
and, for private heads, an output filter on every site that drops `heads.` entries from what it sends.

The folder is plain JSON (written here rather than through FedJob's exporter, which copies imported
third-party modules into custom/):

    <name>/meta.json                           NVFlare's, plus `fedtune.dp`: the job's declared privacy settings,
                                               checked by every site's gate before deployment (fedtune.fl.gate)
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
import re
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
# how long a site waits before asking the server for its next task, after a result or a "no task yet"
# (NVFlare's default, 2 s, is idle time between every two phases of a job: rounds of a small job take seconds)
TASK_REQUEST_INTERVAL = 0.5
# a job name or job id used as a folder name: no separator, no leading dot, so never `..` nor absolute
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SERVER_WORKFLOW = "fedtune.fl.controller.FedtuneController"


def check_name(value: object, what: str = "job name") -> str:
    """`value` if it is a safe folder name (1-100 letters, digits, '.', '_', '-'; starts with a letter or
    digit), else ValueError: a name that ends up in a path is checked before anything touches the disk."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a safe name: use 1-100 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    return value


def server_config(job: JobConfig) -> dict:
    return {"format_version": 2,
            "server": {"task_request_interval": TASK_REQUEST_INTERVAL},
            "workflows": [{"id": "fedtune_controller", "path": SERVER_WORKFLOW,
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


def is_job_folder(path: Path) -> bool:
    """Whether `path` is a job folder build_job wrote (the only kind of folder it replaces)."""
    try:
        cfg = json.loads((path / "app" / "config" / "config_fed_server.json").read_text())
        return (path / "meta.json").is_file() and cfg["workflows"][0]["path"] == SERVER_WORKFLOW
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def build_job(job: JobConfig, out_dir: str | Path) -> Path:
    """Write the job into `out_dir/<job.name>` and return that folder (what `submit_job` takes). The name must
    be a safe slug; an earlier job folder of the same name is replaced, anything else there is refused."""
    target = Path(out_dir).resolve() / check_name(job.name)
    if target.is_symlink() or (target.exists() and not is_job_folder(target)):
        raise ValueError(f"{target} exists and is not a fedtune job folder: not replaced (choose another --name "
                         f"or --out)")
    if target.exists():
        shutil.rmtree(target)
    (target / "app" / "config").mkdir(parents=True)
    (target / "app" / "custom").mkdir()
    meta = {"name": job.name, "resource_spec": {}, "min_clients": job.min_sites, "deploy_map": {"app": ["@ALL"]},
            # what each site's privacy gate (fedtune.fl.gate) checks before the job is deployed to it
            "fedtune": {"kind": job.kind, "dp": job.dp or None}}
    (target / "meta.json").write_text(json.dumps(meta, indent=2))
    (target / "app" / "config" / "config_fed_server.json").write_text(json.dumps(server_config(job), indent=2))
    (target / "app" / "config" / "config_fed_client.json").write_text(json.dumps(client_config(job), indent=2))
    (target / "app" / "custom" / "fedtune_launch.py").write_text(LAUNCH_SHIM)
    return target
