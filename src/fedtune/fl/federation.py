"""A whole federation on one machine: real provisioning, the server and every site client as real processes
(`fedtune server` / `fedtune client`) talking gRPC with mTLS over loopback. Used by `fedtune demo`,
`fedtune compare` and the tests.

    with LocalFederation(workdir, {"site-1": dir1, "site-2": dir2}) as fed:
        result = fed.run(job)                              # a JobConfig; progress printed; returns the result folder
        fed.kill_site("site-2")                            # SIGKILL a site (failure tests)
        fed.restart_server()                               # SIGKILL the server and start it again

Processes run in their own process groups and are stopped on exit, Ctrl-C included; logs go to
`<workdir>/logs/<name>.log`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .config import JobConfig
from .resume import build_job_from
from .provision import Kits, provision
from .submit import submit_and_wait

READY = {"server": "Server started", "client": "Successfully registered client"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fedtune_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedtune", *args]


def print_event(ev: dict) -> None:
    kind = ev.get("event")
    if kind == "round":
        sites = ", ".join(f"{s}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, float))
                          for s, m in sorted(ev.get("sites", {}).items()))
        missing = f"  (no answer: {', '.join(ev['missing'])})" if ev.get("missing") else ""
        rejected = "".join(f"  (dropped {s}: {why})" for s, why in sorted(ev.get("rejected", {}).items()))
        print(f"  round {ev['round']} done in {ev['seconds']:.1f} s: {sites}{missing}{rejected}", flush=True)
    elif kind == "stats":
        what = "row counts and pooled label statistics" if ev.get("pooled", True) else "row counts"
        print(f"  {what} from {', '.join(ev['sites'])}", flush=True)
    elif kind == "refused":
        for site, why in sorted(ev["sites"].items()):
            print(f"  {site} refused the job {why}", flush=True)
    elif kind == "sites":
        print(f"  {len(ev['sites'])} site(s) registered: {', '.join(ev['sites'])}", flush=True)
    elif kind == "start":
        print(f"  job started: {ev['rounds']} rounds, {ev['bytes_down'] / 1e6:.2f} MB of parameters travel", flush=True)
    elif kind == "failed":
        print(f"  job failed after round {ev.get('last_round')}: {ev.get('error')}", flush=True)
    elif kind == "done":
        print(f"  job done; final metrics from {', '.join(ev['sites'])}", flush=True)


class LocalFederation:
    def __init__(self, workdir: str | Path, sites: dict[str, Path], scheme: str = "grpc",
                 threads_per_site: int = 1, env: dict | None = None, quiet: bool = False):
        self.workdir = Path(workdir).resolve()
        self.site_data = {s: Path(d).resolve() for s, d in sites.items()}
        self.scheme = scheme
        self.threads = threads_per_site
        self.extra_env = env or {}
        self.quiet = quiet
        self.procs: dict[str, subprocess.Popen] = {}
        self.kits: Kits | None = None

    # ---- processes ------------------------------------------------------------------------------------
    def _log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _start(self, name: str, args: list[str]) -> None:
        self._log(name).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               **self.extra_env}
        log = self._log(name).open("a")
        self.procs[name] = subprocess.Popen(fedtune_command(*args), stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True, cwd=str(self.workdir))

    def _wait_for(self, name: str, marker: str, timeout: float, seen: int = 0) -> None:
        """Wait until `marker` appears in the log more than `seen` times (the log of a restart appends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._log(name).read_text(errors="replace").count(marker) > seen:
                return
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited ({self.procs[name].returncode}) before it was ready; "
                                   f"see {self._log(name)}")
            time.sleep(0.3)
        raise TimeoutError(f"{name} not ready after {timeout:.0f} s; see {self._log(name)}")

    def start(self, timeout: float = 120.0) -> "LocalFederation":
        self.kits = provision(self.workdir / "pki", list(self.site_data), scheme=self.scheme,
                              fl_port=free_port(), admin_port=free_port(), force=True)
        self._start("server", ["server", "--kit", str(self.kits.server)])
        self._wait_for("server", READY["server"], timeout)
        for site, data in self.site_data.items():
            self.start_site(site, data)
        for site in self.site_data:
            self._wait_for(site, READY["client"], timeout)
        if not self.quiet:
            print(f"federation up: server + {len(self.site_data)} sites (mTLS, {self.scheme}); logs in "
                  f"{self.workdir / 'logs'}", flush=True)
        return self

    def start_site(self, site: str, data: Path, kit: Path | None = None, startup_deadline: float = 120.0) -> None:
        self._start(site, ["client", "--kit", str(kit or self.kits.sites[site]), "--data", str(data),
                           "--startup-deadline", str(startup_deadline)])

    @staticmethod
    def _tree(proc: subprocess.Popen) -> list:
        """The process and everything under it (NVFlare's processes run in sessions of their own)."""
        import psutil
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def restart_server(self, timeout: float = 120.0) -> None:
        """SIGKILL the server (a crash) and start it again with the same kit and storage; the running job is
        lost (NVFlare marks it abandoned), the sites reconnect on their own."""
        self.kill_site("server")
        started = self._log("server").read_text(errors="replace").count(READY["server"])
        self._start("server", ["server", "--kit", str(self.kits.server)])
        self._wait_for("server", READY["server"], timeout, seen=started)

    def kill_site(self, site: str) -> None:
        """SIGKILL a site and every process under it: a crash, not a shutdown."""
        import psutil
        proc = self.procs[site]
        for p in self._tree(proc):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()

    def stop(self) -> None:
        """SIGTERM every process (sites first), then SIGKILL what is left after 20 s: no orphan survives."""
        import psutil
        trees = {name: self._tree(proc) for name, proc in self.procs.items()}
        for name in reversed(list(self.procs)):
            for p in trees[name]:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs([p for t in trees.values() for p in t], timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.wait()

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- jobs -----------------------------------------------------------------------------------------
    def run(self, job: JobConfig, timeout: float = 3600.0, on_event: Callable[[dict], None] | None = None,
            on_submit: Callable[[str], None] | None = None, init_from: str | Path | None = None) -> Path:
        """Build, submit and wait for `job` (starting from the weights at `init_from`, see
        `fedtune.fl.resume`); returns the downloaded result folder."""
        job_dir = build_job_from(job, self.workdir / "jobs", init_from)
        if not self.quiet:
            print(f"submitting {job.kind} job '{job.name}' ({job.rounds} rounds, heads {job.heads}, "
                  f"trunk {job.trunk.get('source')} {job.trunk.get('mode')})", flush=True)
        _, result = submit_and_wait(job_dir, self.kits.admin, self.workdir / "results", timeout=timeout,
                                    on_event=on_event or (None if self.quiet else print_event), on_submit=on_submit)
        return result
