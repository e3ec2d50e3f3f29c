"""The NVFlare server and a site client as foreground processes (what the containers run).

Each runs with its kit folder as working directory, in its own process group so that a stop reaches the
job processes NVFlare spawns. SIGTERM / SIGINT are forwarded; the exit code is the child's. A client that
does not register within its start-up deadline is stopped with a clear reason: a kit from another
provisioning fails the TLS handshake (CERTIFICATE_VERIFY_FAILED) and NVFlare would retry forever.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .pki import kit_org
from .policy import PolicyError, install_gate

SERVER_READY = re.compile(r"Server started|Starting Server|started server", re.I)
CLIENT_READY = re.compile(r"Successfully registered client|registered client", re.I)
TLS_FAILURE = re.compile(r"CERTIFICATE_VERIFY_FAILED|Handshake failed|certificate verify failed", re.I)


class StartupError(RuntimeError):
    pass


def check_kit(kit: Path, role: str) -> Path:
    kit = Path(kit).resolve()
    config = kit / "startup" / ("fed_server.json" if role == "server" else "fed_client.json")
    if not config.exists():
        raise StartupError(f"{kit}: not a {role} startup kit (no {config.relative_to(kit)})")
    return kit


def server_command(kit: Path) -> list[str]:
    return [sys.executable, "-u", "-m", "nvflare.private.fed.app.server.server_train", "-m", str(kit),
            "-s", "fed_server.json", "--set", "secure_train=true", "config_folder=config", f"org={kit_org(kit)}"]


def client_command(kit: Path, site: str) -> list[str]:
    return [sys.executable, "-u", "-m", "nvflare.private.fed.app.client.client_train", "-m", str(kit),
            "-s", "fed_client.json", "--set", "secure_train=true", f"uid={site}", "config_folder=config",
            f"org={kit_org(kit)}"]


def site_of_kit(kit: Path) -> str:
    import json
    return json.loads((kit / "startup" / "fed_client.json").read_text())["client"]["fqsn"]


def run_foreground(cmd: list[str], cwd: Path, env: dict | None = None, ready: re.Pattern | None = None,
                   startup_deadline: float = 0.0, role: str = "process") -> int:
    """Run `cmd`, echo its output, forward SIGTERM/SIGINT to its process group, return its exit code.
    With a startup deadline, exit 3 when `ready` has not appeared in the output by then."""
    proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    state = {"ready": ready is None, "tls": 0, "stopping": False}

    def stop(signum=signal.SIGTERM, *_):
        state["stopping"] = True
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def pump():
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if ready is not None and not state["ready"] and ready.search(line):
                state["ready"] = True
                print(f"[fedtune] {role} is up", flush=True)
            if TLS_FAILURE.search(line):
                state["tls"] += 1

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    start = time.monotonic()
    timed_out = False
    try:
        while proc.poll() is None:
            if startup_deadline and not state["ready"] and time.monotonic() - start > startup_deadline:
                timed_out = True
                stop()
                break
            time.sleep(0.2)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        reader.join(timeout=2)
    if timed_out:
        why = ("the TLS handshake with the server failed: this kit was not signed by the federation's root CA "
               "(was it provisioned separately?)" if state["tls"] else "the server did not accept the client "
               "(is the server running and reachable?)")
        print(f"[fedtune] error: {role} did not register within {startup_deadline:.0f} s: {why}", file=sys.stderr,
              flush=True)
        return 3
    return 0 if state["stopping"] and proc.returncode in (-signal.SIGTERM, 143, 0) else proc.returncode


# After the server side of a job ends, NVFlare waits for every site's outcome before it marks the job
# finished: 900 s by default, which a dead site always uses up. Ours: 60 s (env var overrides).
CLIENT_OUTCOME_WAIT = "NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT"


def run_server(kit: Path, client_outcome_wait: float | None = None) -> int:
    from .provision import keep_storage_in_kit
    kit = check_kit(kit, "server")
    if not (kit / "local" / "resources.json").exists():
        keep_storage_in_kit(kit)
    env = dict(os.environ)
    if client_outcome_wait is not None:
        env[CLIENT_OUTCOME_WAIT] = str(client_outcome_wait)
    env.setdefault(CLIENT_OUTCOME_WAIT, "60")
    return run_foreground(server_command(kit), kit, env=env, ready=SERVER_READY, role="server")


def check_gpus(gpus: int) -> int:
    """Processes per job on this site: one per GPU (NCCL); without CUDA, CPU processes (gloo)."""
    if gpus < 1:
        raise StartupError(f"--gpus {gpus}: a site trains with at least one process")
    if gpus > 1:
        import torch
        if torch.cuda.is_available() and gpus > torch.cuda.device_count():
            raise StartupError(f"--gpus {gpus}, but this machine shows {torch.cuda.device_count()} GPU(s)")
    return gpus


def run_client(kit: Path, site: str | None, data: Path | None, startup_deadline: float = 120.0,
               extra_env: dict | None = None, gpus: int | None = None) -> int:
    """Run the site's NVFlare client. Every job's training script runs as a child of it (Client API,
    external process, see fedtune.fl.launch) and learns the site's settings from the environment:
    FEDTUNE_DATA (the data folder), FEDTUNE_GPUS (processes per job: --gpus, default from the environment or
    1), FEDTUNE_RUNS (per-job outputs: <kit>/fedtune-runs unless set), FEDTUNE_EMBEDDING_CACHE (a frozen trunk's
    embeddings of the site's rows, reused across jobs: <kit>/fedtune-embeddings unless set; `off`), FEDTUNE_KIT
    (the kit: its local/fedtune-privacy.json policy, see fedtune.fl.policy). The kit gets the site's privacy gate
    (`local/fedtune__p_resources.json`, fedtune.fl.gate), which refuses the deployment of a job below that
    policy."""
    kit = check_kit(kit, "client")
    kit_site = site_of_kit(kit)
    if site and site != kit_site:
        raise StartupError(f"{kit} is the kit of {kit_site!r}, not {site!r}")
    env = dict(os.environ)
    if data is not None:
        data = Path(data).resolve()
        if not data.exists():
            raise StartupError(f"data folder {data} does not exist")
        env["FEDTUNE_DATA"] = str(data)     # the training script (a child of this process) reads it
    env["FEDTUNE_SITE"] = kit_site
    env["FEDTUNE_KIT"] = str(kit)        # the site's own settings outside any job (its privacy policy)
    try:                                 # NVFlare loads the site's privacy gate from the kit at start
        install_gate(kit)
    except (PolicyError, OSError) as exc:
        raise StartupError(f"cannot install the site's privacy gate: {exc}") from None
    if gpus is None:
        try:
            gpus = int(env.get("FEDTUNE_GPUS") or 1)
        except ValueError:
            raise StartupError(f"FEDTUNE_GPUS={env['FEDTUNE_GPUS']!r}: expected a number of processes")
    env["FEDTUNE_GPUS"] = str(check_gpus(gpus))
    env.setdefault("FEDTUNE_RUNS", str(kit / "fedtune-runs"))
    env.setdefault("FEDTUNE_EMBEDDING_CACHE", str(kit / "fedtune-embeddings"))   # frozen-trunk embeddings, owner-only
    # the job's launch command is `python3 -m fedtune.fl.launch`: make it this interpreter
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra_env or {})
    return run_foreground(client_command(kit, kit_site), kit, env=env, ready=CLIENT_READY,
                          startup_deadline=startup_deadline, role=f"client {kit_site}")
