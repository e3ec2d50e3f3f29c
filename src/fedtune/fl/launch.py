"""The command a site's NVFlare client runs for every fedtune job (Client API, external-process mode).

The job folder is the same for every site, so how many processes train is the site's own setting:
`fedtune client --gpus N` puts `FEDTUNE_GPUS=N` into the client's environment, which NVFlare passes on to
this launcher. With N = 1 the site script (`fedtune.fl.client`) runs right here, in this process; with
N > 1 this process becomes `torchrun --standalone --nproc_per_node N -m fedtune.fl.client` (exec: same
PID, so NVFlare's stop of the trainer's process group reaches torchrun, which stops its workers). Rank 0
talks to NVFlare; the ranks train with DistributedDataParallel (NCCL on GPUs, gloo on CPU).

    python -u -m fedtune.fl.launch
"""

from __future__ import annotations

import os
import sys

GPUS_ENV = "FEDTUNE_GPUS"


def processes() -> int:
    value = os.environ.get(GPUS_ENV, "").strip() or "1"
    try:
        n = int(value)
    except ValueError:
        raise SystemExit(f"{GPUS_ENV}={value!r}: expected a whole number of processes (GPUs) per site")
    if n < 1:
        raise SystemExit(f"{GPUS_ENV}={n}: a site trains with at least one process")
    return n


def torchrun_command(n: int) -> list[str]:
    # --standalone: a local rendezvous on a free port (two DDP sites on one machine do not collide);
    # torchrun forwards SIGTERM/SIGINT to its workers and stops them all when one fails
    return [sys.executable, "-u", "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={n}", "-m", "fedtune.fl.client"]


def main() -> None:
    n = processes()
    if n == 1:
        from .client import main as site_main
        site_main()
        return
    cmd = torchrun_command(n)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
