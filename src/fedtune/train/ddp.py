"""Data-parallel training on one site with several GPUs (or several CPU processes): DistributedDataParallel.

Launched by `torchrun` (see `fedtune.fl.launch`): every rank loads the same site folder and builds the same
model; `DDPTrainer` is the ordinary `Trainer` (same batches, same schedule, same early stopping) except that
each batch of B rows is split over the N ranks and the loss is scaled so that DDP's gradient average equals
the gradient of the whole batch: N ranks with about B/N rows each take the same optimisation step as one
process with B rows, up to floating-point noise. Validation runs on rank 0 and its result is broadcast, so
every rank takes the same early-stopping decision.

Backends: NCCL for CUDA tensors (one GPU per rank, `cuda:LOCAL_RANK`), gloo for CPU tensors, in one process
group with a long timeout: between federated rounds the other ranks wait in a broadcast for rank 0, which
waits for the server (a rank that dies is noticed by torchrun, which stops the others).
"""

from __future__ import annotations

import datetime
import os
import threading

import numpy as np
import torch
from torch import nn

from .loop import Trainer

CONTROL_TIMEOUT = datetime.timedelta(days=7)   # waiting for the next federated round can take long


class DistContext:
    """This process's place in a torchrun launch (RANK / WORLD_SIZE / LOCAL_RANK); world 1 is plain."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.backend: str | None = None
        self.initialized = False

    @classmethod
    def from_env(cls) -> "DistContext":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str = "auto") -> str:
        """The device this rank trains on: its own GPU (cuda:LOCAL_RANK) when CUDA is used, else as requested."""
        if not self.enabled:
            return requested
        if requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested if requested != "auto" else "cpu"

    def init(self) -> "DistContext":
        """Join the process group: gloo for CPU tensors and, where CUDA is available, NCCL for CUDA tensors
        (one group, dispatched by device). This rank's GPU becomes the current device."""
        if not self.enabled or self.initialized:
            return self
        import torch.distributed as dist
        if torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"rank {self.rank}: LOCAL_RANK {self.local_rank} but only "
                                   f"{torch.cuda.device_count()} GPU(s) visible")
            torch.cuda.set_device(self.local_rank)
            self.backend = "cpu:gloo,cuda:nccl"
        else:
            self.backend = "gloo"
        dist.init_process_group(self.backend, timeout=CONTROL_TIMEOUT)
        self.initialized = True
        watch_parent()
        return self

    def broadcast_object(self, obj=None):
        """Rank 0's `obj` on every rank (pickled; for small control messages)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` (in place) on every rank with rank 0's values."""
        if not self.enabled:
            return
        import torch.distributed as dist
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def close(self) -> None:
        if self.initialized:
            import torch.distributed as dist
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()
            self.initialized = False


def watch_parent(interval: float = 2.0) -> None:
    """Exit when the launching process (torchrun) disappears: torchrun starts its workers in sessions of their
    own, so a SIGKILL of the launcher would otherwise leave them waiting in a collective."""
    parent = os.getppid()

    def watch():
        import time
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="fedtune-parent-watch", daemon=True).start()


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in `model` (trunk, adapters, heads) to `p`; returns how many changed.
    Dropout masks are drawn per process, so only without dropout can N ranks reproduce one process exactly."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = float(p)
            n += 1
    return n


class _Step(nn.Module):
    """What DDP wraps: the task model as a submodule and the Trainer's forward (`_outputs`) as forward, so
    DDP's gradient hooks see exactly the step the single-process Trainer takes."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.model = trainer.model
        self._outputs = trainer._outputs

    def forward(self, data, idx):
        return self._outputs(data, idx)


class DDPTrainer(Trainer):
    """`Trainer` over DistributedDataParallel; see the module docstring. `dist` must be initialised."""

    def __init__(self, model: nn.Module, cfg, stats=None, writer=None, total_epochs: int | None = None,
                 tag: str = "", dist: DistContext | None = None):
        from torch.nn.parallel import DistributedDataParallel
        self.dist = dist or DistContext.from_env()
        if self.dist.enabled and not self.dist.initialized:
            raise RuntimeError("DDPTrainer needs an initialised process group (DistContext.init())")
        cfg = type(cfg).from_dict({**cfg.to_dict(), "device": self.dist.device(cfg.device),
                                   "progress": cfg.progress and self.dist.is_main})
        super().__init__(model, cfg, stats, writer=writer if self.dist.is_main else None,
                         total_epochs=total_epochs, tag=tag)
        self.ddp = None
        if self.dist.enabled:
            # static_graph: every step uses the same parameters, and some encoders hold trainable parameters
            # their forward never uses (ESM's contact head): DDP learns that once, without a graph walk per step
            self.ddp = DistributedDataParallel(_Step(self), device_ids=None, static_graph=True)

    def _split(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.dist.rank::self.dist.world]

    def train_step(self, data, idx: np.ndarray) -> float:
        if not self.dist.enabled:
            return super().train_step(data, idx)
        import torch.distributed as dist
        self.model.train()
        if self.frozen:
            self.model.trunk.eval()
        loss = self.task.loss
        count = loss.count(self._targets(data, idx)).clamp_min(1)     # the whole batch's denominator
        part = self._split(idx)
        empty = len(part) == 0
        if empty:      # every rank must run forward and backward through DDP; this one contributes zero
            part = idx[:1]
        with self.autocast():
            out = self.ddp(data, part)
        total, _ = loss.terms(out, self._targets(data, part))
        if empty:
            total = total * 0.0
        # DDP averages gradients over ranks: scale so that the average is d(sum over the batch / count)
        self.optimise(total * self.dist.world / count)
        value = (total / count).detach().float()
        dist.all_reduce(value)
        return self.log_loss(value.item())

    def evaluate(self, data) -> dict:
        """Computed on rank 0, the same result on every rank (so early stopping agrees)."""
        if not self.dist.enabled:
            return super().evaluate(data)
        result = super().evaluate(data) if self.dist.is_main else None
        return self.dist.broadcast_object(result)
