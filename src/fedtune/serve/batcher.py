"""The micro-batcher: one worker thread per loaded model owns all model code.

Requests put a Job (their items + the head sets and tasks they want) on the batcher's queue and await a
concurrent Future; the asyncio loop never runs model code. The worker takes items across concurrent jobs
(up to `max_batch`, waiting at most `max_wait_ms` for a batch to fill), sorts them by length, runs the trunk
once per item in padded chunks of at most `max_batch_tokens`, and when every item of a job has its embedding
applies that job's heads (all requested head sets and tasks share the one trunk pass).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher was retired by a reload; submit to the current model instead."""


@dataclass(eq=False)
class Job:
    items: list                       # fitness: (heavy, light) pairs; sentiment: texts
    head_sets: tuple[str, ...]
    tasks: tuple[str, ...] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0                    # items handed to the worker so far
    done: int = 0                     # items embedded so far
    emb: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items)


def item_length(item) -> int:
    return len(item[0]) + len(item[1]) if isinstance(item, tuple) else len(item)


class MicroBatcher:
    def __init__(self, name: str, bundle, *, max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_batch_tokens: int = 16384, metrics=None):
        self.name = name
        self.bundle = bundle
        self.model = bundle.model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_tokens = max_batch_tokens
        self.metrics = metrics
        self.device = bundle.device
        self._pending: collections.deque[Job] = collections.deque()
        self._queued = 0
        self._closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # ---- called from the event loop -------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        with self._cv:
            if self._closed:
                raise BatcherClosed(self.name)
            if not job.items:
                job.future.set_result({})
                return job.future
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
        torch.set_grad_enabled(False)
        while True:
            slices = self._take()
            if slices is None:
                break
            live = [s for s in slices if not s[0].future.done()]   # cancelled (client left) or failed: skip
            jobs = list(dict.fromkeys(job for job, _, _ in live))
            try:
                self._embed(live)
                for job in jobs:
                    if job.done == len(job) and not job.future.done():
                        result = self._heads(job)
                        job.emb = None
                        _resolve(job.future, result)
            except Exception as exc:   # a model failure answers the jobs involved, never kills the worker
                log.exception("%s: batch of %d items failed", self.name, sum(e - s for _, s, e in live))
                for job in jobs:
                    job.emb = None
                    _resolve(job.future, exc=exc)
            if self.metrics is not None:
                n = sum(e - s for _, s, e in live)
                if n:
                    self.metrics.batch_size.labels(self.name).observe(n)
                    self.metrics.items.labels(self.name).inc(n)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _embed(self, slices) -> None:
        refs = [(job, i) for job, start, end in slices for i in range(start, end)]
        refs.sort(key=lambda r: item_length(r[0].items[r[1]]))
        chunks, chunk, longest = [], [], 0
        for ref in refs:    # length-sorted: each chunk pads to its own longest item only
            length = item_length(ref[0].items[ref[1]]) + 4
            if chunk and (len(chunk) + 1) * max(longest, length) > self.max_batch_tokens:
                chunks.append(chunk)
                chunk, longest = [], 0
            chunk.append(ref)
            longest = max(longest, length)
        if chunk:
            chunks.append(chunk)
        with torch.inference_mode(), self._autocast():
            for chunk in chunks:
                items = [job.items[i] for job, i in chunk]
                if self.bundle.kind == "fitness":
                    tokens = self.model.tokenize([h for h, _ in items], [lt for _, lt in items])
                else:
                    tokens = self.model.tokenize(items)
                emb = self.model.embed_tokens(tokens).float()
                for row, (job, i) in enumerate(chunk):
                    if job.emb is None:
                        job.emb = torch.empty(len(job), emb.shape[1], device=emb.device)
                    job.emb[i] = emb[row]
                    job.done += 1

    def _heads(self, job: Job) -> dict:
        """{head_set: {task: np.ndarray [n, n_assays]}} (fitness) or {head_set: probabilities [n, 3]}."""
        out = {}
        with torch.inference_mode():
            for name in job.head_sets:
                heads = self.bundle.head_sets[name]
                if self.bundle.kind == "fitness":
                    res = self.model.apply_heads(job.emb, heads, list(job.tasks) if job.tasks else None)
                    out[name] = {t: v.float().cpu().numpy() for t, v in res.items()}
                else:
                    out[name] = self.model.apply_heads(job.emb, heads).float().softmax(-1).cpu().numpy()
        return out


def _resolve(future: Future, result=None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except Exception:   # cancelled by a client that went away: nobody is waiting
        pass
