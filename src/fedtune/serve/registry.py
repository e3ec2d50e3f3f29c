"""Loaded models and hot reload.

A reload loads every new bundle fully (digests and shapes verified by `load_bundle`), warms it up (one
prediction through every head set, outputs must be finite), then swaps the name -> model map in one
assignment. Requests hold the model they started with; the old batchers finish what they have queued and
stop. Any failure leaves the old models serving and is reported, never raised into a request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import Bundle, load_bundle
from ..models.backends import BackendError, apply_backend, backend_of
from ..tasks import get, kinds
from .batcher import BatcherClosed, Job, MicroBatcher
from .cache import new_cache

log = logging.getLogger(__name__)


class ReloadError(RuntimeError):
    """A reload that was refused; the models being served are unchanged."""


class PathRefused(ReloadError):
    """A reload path outside the bundle roots (nothing was read)."""


@dataclass
class LoadedModel:
    name: str                         # the model name in the API: the bundle's kind
    path: Path
    bundle: Bundle
    batcher: MicroBatcher
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    @property
    def trunk(self) -> str:
        t = self.bundle.manifest.get("trunk", {})
        return str(t.get("source") or t.get("architecture") or "")

    @property
    def backend(self) -> str:
        """The trunk's inference backend ("fp32", "bf16", "int8", "onnx-int8"; models/backends.py)."""
        return backend_of(self.bundle.model)

    @property
    def version(self) -> str:
        return self.bundle.digest[:12]


def warm_up(bundle: Bundle) -> None:
    """One prediction of the kind's `warmup_items` per head set (compiles kernels, touches every weight);
    refuses non-finite output."""
    items = get(bundle.kind).warmup_items(bundle.model)
    if not items:
        raise ReloadError(f"{bundle.path}: the {bundle.kind} kind gives no warm-up items (Task.warmup_items)")
    for name in bundle.head_sets:
        out = bundle.predict(items, head_set=name)
        values = np.concatenate([v.ravel() for v in (out.values() if isinstance(out, dict) else [out])])
        if not np.all(np.isfinite(values)):
            raise ReloadError(f"{bundle.path}: head set {name!r} gives non-finite predictions")


class Registry:
    def __init__(self, settings, metrics=None):
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.paths: list[Path] = []
        self.last_reload: dict | None = None
        self.sighup_pending = False       # a SIGHUP that came before the first load finished
        self._lock = threading.Lock()     # one load at a time
        self.cache = new_cache(settings.embedding_cache_mb)
        if metrics is not None:
            metrics.watch_cache(self.cache)

    # ---- lookups (event loop) ------------------------------------------------------------------------
    def get(self, name: str) -> LoadedModel | None:
        return self.models.get(name)

    def dead(self) -> list[str]:
        """Models whose batcher worker has died (the liveness probe fails while any has)."""
        return sorted(n for n, m in self.models.items() if not m.batcher.alive)

    def submit(self, name: str, make_job) -> tuple[LoadedModel, Job]:
        """Queue a job on the current model of `name`; retries on the new model when a reload retired the
        batcher in between (so no request ever fails because of a reload)."""
        while True:
            model = self.models.get(name)
            if model is None:
                raise KeyError(name)
            job = make_job(model)
            try:
                model.batcher.submit(job)
                return model, job
            except BatcherClosed:
                if self.models.get(name) is model:    # closed and not replaced: the service is shutting down
                    raise
                continue

    def roots(self) -> list[Path]:
        """Folders a reload path must resolve inside: FEDTUNE_BUNDLE_ROOTS, else the parent folders of the
        bundles served at startup (of the path given and, when it is a symlink, of the folder it points to)."""
        if self.settings.bundle_roots:
            return [Path(r).resolve() for r in self.settings.bundle_roots]
        given = [Path(p).absolute() for p in self.settings.bundles]
        return sorted({p.parent.resolve() for p in given} | {p.resolve().parent for p in given})

    def check_roots(self, paths: list[str]) -> None:
        roots = self.roots()
        for p in paths:
            try:
                resolved = Path(p).resolve()
            except (OSError, ValueError, RuntimeError) as exc:
                raise PathRefused(f"reload path {p!r} refused: {exc}") from None
            if not any(resolved.is_relative_to(r) for r in roots):
                raise PathRefused(f"reload path {p!r} is outside the bundle roots {[str(r) for r in roots]} "
                                  f"(FEDTUNE_BUNDLE_ROOTS)")

    # ---- loading (worker threads only) ---------------------------------------------------------------
    def _load_one(self, path: Path) -> LoadedModel:
        start = time.perf_counter()
        bundle = load_bundle(path, device=self.settings.resolved_device())
        if bundle.kind not in kinds():
            raise ReloadError(f"{path}: unknown bundle kind {bundle.kind!r}")
        try:
            apply_backend(bundle.model, self.settings.backend)
        except BackendError as exc:
            raise ReloadError(f"{path}: {exc}") from None
        if self.settings.warmup:
            warm_up(bundle)
        s = self.settings
        batcher = MicroBatcher(bundle.kind, bundle, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms,
                               max_batch_tokens=s.max_batch_tokens, max_queue=s.max_queue, metrics=self.metrics,
                               cache=self.cache)
        return LoadedModel(bundle.kind, Path(path), bundle, batcher, load_seconds=time.perf_counter() - start)

    def load(self, paths: list[str | Path] | None = None) -> dict:
        """Load `paths` (default: the paths being served, re-read from disk) and swap them in: each new
        bundle replaces the model of its kind, other kinds keep serving. Raises ReloadError, old models kept."""
        with self._lock:
            paths = [Path(p) for p in (paths if paths else self.paths)]
            if not paths:
                raise ReloadError("no bundle paths given and none being served")
            new: dict[str, LoadedModel] = {}
            try:
                for path in paths:
                    model = self._load_one(path)
                    if model.name in new:
                        model.batcher.close()
                        raise ReloadError(f"two {model.name} bundles given ({new[model.name].path} and {path}); "
                                          f"serve at most one per kind")
                    new[model.name] = model
            except Exception as exc:
                for m in new.values():
                    m.batcher.close()
                message = str(exc) if isinstance(exc, ReloadError) else f"{type(exc).__name__}: {exc}"
                self.last_reload = {"ok": False, "time": time.time(), "error": message}
                if self.metrics is not None and self.models:
                    self.metrics.reload_failures.inc()
                raise ReloadError(message) from exc
            old = self.models
            merged = {**old, **new}
            self.models = merged                 # the atomic swap
            self.paths = [m.path for m in merged.values()]
            for name, model in old.items():
                if merged[name] is not model:
                    model.batcher.close()        # answers what it has queued, then stops
            if self.metrics is not None:
                if old:
                    self.metrics.reloads.inc()
                self.metrics.set_models(merged)
            self.last_reload = {"ok": True, "time": time.time(),
                                "models": {n: m.bundle.digest for n, m in new.items()}}
            log.info("serving %s", {n: f"{m.path} ({m.version})" for n, m in merged.items()})
            return {n: m.bundle.digest for n, m in merged.items()}

    def close(self) -> None:
        for m in self.models.values():
            m.batcher.close(wait=5.0)
