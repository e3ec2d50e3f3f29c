"""`fedtune predict`: score every row of a file with a bundle, the way the service does.

Each chunk of rows becomes the kind's /v1 request body (`KindApi.file_body`) and goes through the service's own
steps: `items` and `job` (validation and options, as a request), the micro-batcher (the one embedding path,
with the per-part embedding cache), `respond`, and `file_values` turns the response into output columns. So
the numbers are REST's by construction. One chunk is in the model while the next is read and validated.

A row that fails validation is reported (row number and reason) and skipped, or with `strict` stops the run
(exit 1) after what came before it is written. Ctrl-C (or SIGTERM, see the CLI) cuts the output back to its
last checkpoint: whole rows only, and `resume` continues there (`score.outputs`).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..bundle import load_bundle
from ..models.backends import BACKENDS, BackendError, apply_backend
from ..serve.batcher import Job, MicroBatcher
from ..serve.cache import new_cache
from ..serve.errors import ApiError
from ..serve.kinds import FileOptions
from ..serve.predict import resolve_heads
from ..serve.registry import LoadedModel
from ..serve.settings import ServeSettings
from ..tasks import get
from .inputs import InputError, InputFile, Row, fingerprint
from .outputs import open_output, partial_path



class StrictStop(Exception):
    """A bad row under --strict: the run stopped after writing the rows before its chunk."""

    def __init__(self, row: Row):
        super().__init__(f"row {row.number}: {row.problem}")
        self.row = row


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    rows_read: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    cache: dict = field(default_factory=dict)

    def line(self, out: Path) -> str:
        rate = (self.rows_read - self.resumed_from) / self.seconds if self.seconds > 0 else 0.0
        cache = (f"; embedding cache: {self.cache['hits']} hits, {self.cache['misses']} misses" if self.cache
                 else "; embedding cache off")
        state = "interrupted: " if self.interrupted else ""
        where = partial_path(out) if self.interrupted else out
        return (f"{state}{self.written} rows written, {self.skipped} skipped to {where} "
                f"({self.rows_read} input rows read, {rate:.1f} rows/s{cache})")


@dataclass
class _Chunk:
    rows: list[Row]                  # the good rows, in input order
    bad: list[Row]
    last: int                        # number of the chunk's last input row
    body: object = None
    context: object = None
    job: Job | None = None


def load_model(bundle_path, *, backend: str, device: str, batch_size: int, cache_mb: float):
    """(LoadedModel with its own batcher, settings): the bundle as the service holds it."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; this fedtune has {', '.join(BACKENDS)}")
    settings = ServeSettings.model_construct(device=device, max_batch=batch_size, max_wait_ms=0.0)
    bundle = load_bundle(bundle_path, device=settings.resolved_device())
    try:
        apply_backend(bundle.model, backend)        # the service's way (`serve.registry`), same numbers
    except BackendError as exc:
        raise ValueError(str(exc)) from None
    batcher = MicroBatcher(bundle.kind, bundle, max_batch=batch_size, max_wait_ms=0.0,
                           max_batch_tokens=settings.max_batch_tokens, max_queue=4 * batch_size,
                           cache=new_cache(cache_mb))
    return LoadedModel(bundle.kind, Path(bundle_path), bundle, batcher), settings


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{e['loc'][-1] if e['loc'] else 'value'}: {e['msg']}" for e in exc.errors())
    details = exc.details if isinstance(exc.details, list) and exc.details else None
    if details and isinstance(details[0], dict) and "problem" in details[0]:
        d = details[0]
        where = d.get("chain") or d.get("column")
        return f"{where}: {d['problem']}" if where else d["problem"]
    return exc.message


class _Scorer:
    def __init__(self, model: LoadedModel, settings, opts: FileOptions, strict: bool, report):
        self.model, self.settings, self.opts, self.strict, self.report = model, settings, opts, strict, report
        self.api = get(model.bundle.kind).api
        self.heads = resolve_heads(model, opts.site)
        self.submitted: list[Job] = []

    def _build(self, rows: list[Row]):
        body = self.api.file_body(self.model, [r.values for r in rows], self.opts)
        items = self.api.items(body, self.settings)
        job_opts, context = self.api.job(self.model, body, self.heads)
        return body, Job(items=items, head_sets=tuple(self.heads.names), opts=job_opts), context

    def prepare(self, rows: list[Row]) -> _Chunk:
        """Validate a chunk as one request; when it fails, row by row to find the bad rows. Submits the job."""
        chunk = _Chunk([r for r in rows if r.problem is None], [r for r in rows if r.problem], rows[-1].number)
        if chunk.rows:
            try:
                chunk.body, chunk.job, chunk.context = self._build(chunk.rows)
            except (ApiError, ValidationError) as exc:
                if isinstance(exc, ApiError) and exc.status != 422:
                    raise
                good = []
                for r in chunk.rows:
                    try:
                        self._build([r])
                        good.append(r)
                    except (ApiError, ValidationError) as row_exc:
                        if isinstance(row_exc, ApiError) and row_exc.status != 422:
                            raise
                        r.problem = _reason(row_exc)
                        chunk.bad.append(r)
                chunk.rows = good
                chunk.bad.sort(key=lambda r: r.number)
                if good:
                    chunk.body, chunk.job, chunk.context = self._build(good)
        for r in chunk.bad:
            self.report(f"row {r.number}: {r.problem}" + ("" if self.strict else "; skipped"))
        if chunk.job is not None and not (self.strict and chunk.bad):
            self.model.batcher.submit(chunk.job)
            self.submitted.append(chunk.job)
            self.submitted = [j for j in self.submitted if not j.future.done()]
        return chunk

    def cancel(self) -> None:
        """Cancel the jobs not answered yet (the batcher skips them)."""
        for job in self.submitted:
            job.future.cancel()

    def values(self, chunk: _Chunk) -> list[list]:
        """The chunk's output rows (waits for its predictions)."""
        if chunk.job is None:
            return []
        while True:
            try:
                result = chunk.job.future.result(timeout=0.5)
                break
            except TimeoutError:
                continue
        response = self.api.respond(self.model, chunk.body, self.heads, chunk.context, result)
        return [r.cells + v for r, v in zip(chunk.rows, self.api.file_values(self.model, response, self.opts))]


def predict(bundle: str | Path, input: str | Path, out: str | Path, *, opts: FileOptions = FileOptions(),
            resume: bool = False, strict: bool = False, batch_size: int = 256, cache_mb: float = 256.0,
            backend: str = "fp32", device: str = "auto", progress: bool = True, report=None) -> Summary:
    """Score `input` into `out` (see the module docstring). Raises InputError / OutputError / BundleError /
    ValueError / ApiError (unknown site, task, assay) before writing anything, StrictStop on a bad row with
    `strict`; returns the summary (`interrupted` after Ctrl-C)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    model, settings = load_model(bundle, backend=backend, device=device, batch_size=batch_size, cache_mb=cache_mb)
    try:
        return _run(model, settings, Path(input), Path(out), opts, resume, strict, batch_size, backend, progress,
                    report, tqdm)
    finally:
        # the worker finishes the batch it is in (queued jobs were cancelled) and ends before the interpreter
        # does: a thread still inside torch at exit aborts the process
        model.batcher.close(wait=600)


def _run(model, settings, input: Path, out: Path, opts, resume, strict, batch_size, backend, progress, report,
         tqdm) -> Summary:
    api = get(model.bundle.kind).api
    header = api.file_header(model, opts)
    source = InputFile(input, api.file_columns(model))
    clash = [c for c in header if c in source.header]
    if clash:
        raise InputError(f"{input}: the input's column(s) {clash} have the names of output columns; rename them")
    sha, size, lines = fingerprint(input)
    identity = {"bundle_digest": model.bundle.digest, "backend": backend,
                "input": {"sha256": sha, "bytes": size},
                "options": {"site": opts.site, "tasks": list(opts.tasks or []), "assays": list(opts.assays or []),
                            "raw": opts.raw}}
    output = open_output(out, source.types, len(source.header))
    scorer = _Scorer(model, settings, opts, strict, report or (lambda msg: tqdm.write(msg, file=sys.stderr)))
    summary = Summary()
    if resume:
        state = output.resume(identity)
        summary.written, summary.skipped, summary.rows_read = state["written"], state["skipped"], state["rows_read"]
        summary.resumed_from = summary.rows_read
    else:
        output.create(identity, source.header + header)
    bar = tqdm(total=source.estimate(lines), initial=summary.rows_read, unit=" rows", file=sys.stderr,
               disable=not progress, mininterval=0.5, smoothing=0.05, dynamic_ncols=True)
    start = time.perf_counter()
    rows = (r for r in source.rows() if r.number > summary.rows_read)

    def finish(chunk: _Chunk) -> None:
        values = scorer.values(chunk)
        output.write(values)
        summary.written += len(values)
        summary.skipped += len(chunk.bad)
        summary.rows_read = chunk.last
        output.commit(summary.rows_read, summary.written, summary.skipped)
        bar.update(chunk.last - bar.n)
        bar.set_postfix(skipped=summary.skipped, refresh=False)

    pending = None
    try:
        while batch := list(itertools.islice(rows, batch_size)):
            chunk = scorer.prepare(batch)
            if pending is not None:
                finish(pending)
                pending = None
            if strict and chunk.bad:
                raise StrictStop(chunk.bad[0])
            pending = chunk
        if pending is not None:
            finish(pending)
        output.commit(summary.rows_read, summary.written, summary.skipped, complete=True)
        output.close()
    except KeyboardInterrupt:
        output.rollback()
        summary.interrupted = True
        scorer.cancel()
    except BaseException:
        output.rollback()
        scorer.cancel()
        raise
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
        summary.cache = model.batcher.cache.stats() if model.batcher.cache is not None else {}
    return summary
