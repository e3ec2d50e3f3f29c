"""The micro-batcher: one worker thread per loaded model owns all model code.

Requests put a Job (their items + the head sets and tasks they want) on the batcher's queue and await a
concurrent Future; the asyncio loop never runs model code. The worker takes items across concurrent jobs
(up to `max_batch`, waiting at most `max_wait_ms` for a batch to fill), runs the trunk once per distinct part
(chain, text) not in the embedding cache, in length-sorted padded chunks of at most `max_batch_tokens`
(`cache.embed_items`), and when every item of a job has its embedding applies that job's heads (all requested
head sets and tasks share the one trunk pass).

Faults stay contained: a batch that fails is retried job by job, so only the request that caused the failure
gets it; the queue is bounded (QueueFull); if the worker thread ever dies, every waiting request is answered
(WorkerDead) and `alive` turns false, which the liveness probe reports.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..models.backends import backend_of
from ..tasks import get
from .cache import EmbeddingCache, embed_items

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher was retired by a reload; submit to the current model instead."""


class QueueFull(RuntimeError):
    """More items are waiting than the queue may hold; the client should retry later."""


class WorkerDead(RuntimeError):
    """The worker thread has stopped unexpectedly; this model answers nothing until the service restarts."""


@dataclass(eq=False)
class Job:
    items: list                       # in the kind's item form (`Task.item_parts`)
    head_sets: tuple[str, ...]
    opts: dict = field(default_factory=dict)    # the kind's options for its heads (`Task.head_outputs`)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0                    # items handed to the worker so far
    done: int = 0                     # items embedded so far
    emb: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items)


class MicroBatcher:
    def __init__(self, name: str, bundle, *, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_batch_tokens: int = 16384, max_queue: int = 4096, metrics=None,
                 cache: EmbeddingCache | None = None):
        self.name = name
        self.bundle = bundle
        self.model = bundle.model
        self.task = get(bundle.kind)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.metrics = metrics
        self.cache = cache            # per-part embeddings, shared by every model (keyed by bundle digest)
        # a part's embedding depends on the bundle and on how its trunk runs (fp32, int8, ...)
        self.namespace = f"{bundle.digest}/{backend_of(bundle.model)}"
        self.device = bundle.device
        self._pending: collections.deque[Job] = collections.deque()
        self._queued = 0
        self._closed = False
        self._dead = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # ---- called from the event loop -------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        with self._cv:
            if self._dead:
                raise WorkerDead(self.name)
            if self._closed:
                raise BatcherClosed(self.name)
            if not job.items:
                job.future.set_result({})
                return job.future
            if self._queued + len(job) > self.max_queue:
                raise QueueFull(f"{self._queued} items already waiting for the {self.name} model "
                                f"(queue limit {self.max_queue})")
            self._pending.append(job)
            self._queued += len(job)
            self._gauge()
            self._cv.notify()
        return job.future

    def close(self, wait: float | None = None) -> None:
        """Stop taking new jobs; jobs already queued are still answered, then the thread ends."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait:
            self._thread.join(wait)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        """False when the worker died (a retired batcher whose thread ended normally counts as alive)."""
        return not self._dead and (self._thread.is_alive() or self._closed)

    # ---- worker thread -------------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(self._queued)

    def _take(self) -> list[tuple[Job, int, int]] | None:
        with self._cv:
            while not self._pending:
                if self._closed:
                    return None
                self._cv.wait()
            deadline = self._pending[0].enqueued + self.max_wait
            while self._queued < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            slices, space = [], self.max_batch
            while self._pending and space > 0:
                job = self._pending[0]
                n = min(space, len(job) - job.taken)
                slices.append((job, job.taken, job.taken + n))
                job.taken += n
                space -= n
                self._queued -= n
                if job.taken == len(job):
                    self._pending.popleft()
            self._gauge()
            return slices

    def _run(self) -> None:
        inflight: list[Job] = []
        try:
            torch.set_grad_enabled(False)
            while True:
                slices = self._take()
                if slices is None:
                    break
                live = [s for s in slices if not s[0].future.done()]    # skip cancelled (timed out) or failed
                inflight = [job for job, _, _ in live]
                self._process(live)
                inflight = []
        except BaseException:   # never expected: Exception is handled per batch; anything else ends the worker
            log.critical("%s: the batcher worker died; this model answers 503 until the service restarts",
                         self.name, exc_info=True)
        finally:
            self._fail_pending(inflight)

    def _fail_pending(self, inflight: list[Job]) -> None:
        """Called as the worker ends: a worker that ends without close() is dead; nobody may wait on it."""
        with self._cv:
            self._dead = not self._closed
            jobs, self._queued = inflight + list(self._pending), 0
            self._pending.clear()
            self._gauge()
        for job in jobs:
            _resolve(job.future, exc=WorkerDead(self.name))

    def _process(self, live: list[tuple[Job, int, int]]) -> None:
        jobs = list(dict.fromkeys(job for job, _, _ in live))
        done_before = {job: job.done for job in jobs}
        try:
            self._embed(live)
            self._answer(jobs)
        except Exception as exc:   # a model failure answers the jobs involved, never kills the worker
            n = sum(e - s for _, s, e in live)
            if len(jobs) == 1:
                log.exception("%s: batch of %d items failed", self.name, n)
                jobs[0].emb = None
                _resolve(jobs[0].future, exc=exc)
            else:                  # one request's failure must not fail the others: retry each alone
                log.warning("%s: batch of %d items from %d requests failed (%s); retrying each request alone",
                            self.name, n, len(jobs), exc)
                for job in jobs:
                    job.done = done_before[job]
                    self._process([s for s in live if s[0] is job])
                return
        if self.metrics is not None:
            n = sum(e - s for _, s, e in live)
            if n:
                self.metrics.batch_size.labels(self.name).observe(n)
                self.metrics.items.labels(self.name).inc(n)

    def _answer(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.done == len(job) and not job.future.done():
                result = self._heads(job)
                job.emb = None
                _resolve(job.future, result)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _embed(self, slices) -> None:
        """One trunk pass per distinct part (chain, text) of the batch not in the cache (`cache.embed_items`:
        length-sorted chunks of at most max_batch_tokens padded tokens)."""
        refs = [(job, i) for job, start, end in slices for i in range(start, end)]
        with torch.inference_mode(), self._autocast():
            emb = embed_items(self.task, self.model, [job.items[i] for job, i in refs], cache=self.cache,
                              namespace=self.namespace, max_batch_tokens=self.max_batch_tokens)
        for row, (job, i) in enumerate(refs):
            if job.emb is None:
                job.emb = torch.empty(len(job), emb.shape[1], device=emb.device)
            job.emb[i] = emb[row]
            job.done += 1

    def _heads(self, job: Job) -> dict:
        """{head_set: the kind's `head_outputs`} (an array, or a dict of arrays, per head set)."""
        with torch.inference_mode():
            return {name: self.task.head_outputs(self.model, job.emb, self.bundle.head_sets[name], **job.opts)
                    for name in job.head_sets}


def _resolve(future: Future, result=None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except Exception:   # cancelled by a client that went away: nobody is waiting
        pass
