"""Prometheus metrics in the service's own registry (so several apps in one process never collide)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# label values a client controls are mapped onto fixed sets, so no request can add a series
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fedtune_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("fedtune_request_duration_seconds", "HTTP request latency",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.grpc_requests = Counter("fedtune_grpc_requests", "gRPC (Open Inference Protocol) calls by method "
                                     "and status code", ["method", "code"], registry=r)
        self.grpc_latency = Histogram("fedtune_grpc_request_duration_seconds", "gRPC call latency",
                                      ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("fedtune_batch_size", "items per micro-batch (one trunk pass each)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("fedtune_queue_depth", "items waiting for a micro-batch", ["model"], registry=r)
        self.items = Counter("fedtune_items_predicted", "antibodies / texts predicted", ["model"], registry=r)
        self.model_info = Gauge("fedtune_model_info", "the bundle being served (value 1)",
                                ["model", "kind", "trunk", "digest", "path"], registry=r)
        self.reloads = Counter("fedtune_reloads", "successful model reloads", registry=r)
        self.reload_failures = Counter("fedtune_reload_failures", "refused model reloads (old model kept)",
                                       registry=r)

        self.cache = None
        r.register(_CacheCollector(self))

    def watch_cache(self, cache) -> None:
        """Report this `serve.cache.EmbeddingCache` (None: off, reported as size 0) at every scrape."""
        self.cache = cache

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """`route` must be a route template of the app (or "unmatched"); `method` outside METHODS: "other"."""
        method = method if method in METHODS else "other"
        self.requests.labels(route, method, status_label(status)).inc()
        self.latency.labels(route, method, status_label(status)).observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        """`method`: a GRPCInferenceService method the service implements; `code`: a grpc.StatusCode name."""
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method, code).observe(seconds)

    def set_models(self, models: dict) -> None:
        """models: name -> LoadedModel; replaces the info series atomically enough for a scrape."""
        self.model_info.clear()
        for name, m in models.items():
            self.model_info.labels(name, m.bundle.kind, m.trunk, m.bundle.digest, str(m.path)).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector:
    """The embedding cache's own counters, read at scrape time (one source of truth, no second bookkeeping)."""

    def __init__(self, metrics: ServeMetrics):
        self.metrics = metrics

    def collect(self):
        cache = self.metrics.cache
        st = cache.stats() if cache is not None else \
            {"hits": 0, "misses": 0, "evictions": 0, "bytes": 0, "entries": 0, "max_bytes": 0}
        yield CounterMetricFamily("fedtune_embedding_cache_hits", "parts (chains, texts) of items that needed no "
                                  "trunk pass (in the cache, or repeated within a batch)", value=st["hits"])
        yield CounterMetricFamily("fedtune_embedding_cache_misses", "parts embedded by the trunk (with the cache off, "
                                  "none are counted)",
                                  value=st["misses"])
        yield CounterMetricFamily("fedtune_embedding_cache_evictions", "entries evicted to stay within the size",
                                  value=st["evictions"])
        yield GaugeMetricFamily("fedtune_embedding_cache_bytes", "bytes held by the cache (vectors, keys, "
                                "per-entry overhead)", value=st["bytes"])
        yield GaugeMetricFamily("fedtune_embedding_cache_entries", "parts held by the cache", value=st["entries"])
        yield GaugeMetricFamily("fedtune_embedding_cache_max_bytes", "the cache's size limit (0: off)",
                                value=st["max_bytes"])


class RequestMetricsMiddleware:
    """Outermost ASGI middleware: counts every HTTP request (also those refused by inner middleware) by its
    route template, so path parameters never blow up the label set."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(template, scope.get("method", ""), status["code"],
                                         time.perf_counter() - start)
