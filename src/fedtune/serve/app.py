"""The FastAPI application: routers, error handlers, body limit, request metrics, SIGHUP reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from .. import __version__
from .deps import require_key_for_metrics
from .errors import BodyLimitMiddleware, install_handlers
from .metrics import RequestMetricsMiddleware, ServeMetrics
from .registry import Registry, ReloadError
from .routes_admin import router as admin_router
from .routes_v1 import router as v1_router
from .routes_v2 import router as v2_router
from .settings import ServeSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Predictions from fedtune export bundles (antibody fitness, financial sentiment).

Requests from concurrent clients are micro-batched: one trunk pass per item, fanned out to every requested
head set and task. Errors are JSON `{"error", "code", "details"}`. When the service has an API key, send it as
`Authorization: Bearer <key>` or `X-API-Key: <key>` (health and metrics stay open). `/v1/admin/*` takes the
separate admin key the same way, and is refused (403) when the service has none."""


def defer_sighup(registry: Registry) -> None:
    """Before the first load (the CLI loads before the app exists): a SIGHUP is remembered, not fatal; the app
    reloads once it serves. Main thread only."""
    def remember(signum, frame):
        registry.sighup_pending = True
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, remember)


def _install_sighup(app: FastAPI, registry: Registry) -> bool:
    """SIGHUP reloads the bundles being served; one that arrives before they are loaded is deferred until
    they are."""
    loop = asyncio.get_running_loop()

    async def reload():
        try:
            models = await asyncio.to_thread(registry.load, None)
            log.info("SIGHUP reload: serving %s", models)
        except ReloadError as exc:
            log.error("SIGHUP reload refused, still serving the previous models: %s", exc)

    def on_sighup():
        if not app.state.loaded:
            registry.sighup_pending = True
            log.info("SIGHUP during the initial load: reloading once it is done")
            return
        task = loop.create_task(reload())
        app.state.reload_tasks.add(task)
        task.add_done_callback(app.state.reload_tasks.discard)

    app.state.on_sighup = on_sighup
    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        return True
    except (ValueError, RuntimeError, NotImplementedError, AttributeError):   # not the main thread / Windows
        return False


def create_app(settings: ServeSettings | None = None, registry: Registry | None = None,
               metrics: ServeMetrics | None = None) -> FastAPI:
    """An app serving `settings.bundles`; pass an already loaded `registry` to skip loading at startup."""
    settings = settings or ServeSettings()
    metrics = metrics or (registry.metrics if registry is not None and registry.metrics else ServeMetrics())
    registry = registry or Registry(settings, metrics)
    if registry.metrics is None:
        registry.metrics = metrics
    metrics.watch_cache(registry.cache)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.sighup = _install_sighup(app, registry)      # first: a SIGHUP while loading must not kill us
        if not registry.models:
            await asyncio.to_thread(registry.load, settings.bundles)
        else:
            metrics.set_models(registry.models)
        app.state.loaded = True
        grpc_server = None
        if settings.grpc_port is not None:
            from .grpc_oip import start_grpc
            grpc_server, app.state.grpc_port = await start_grpc(registry, settings, metrics)
        if registry.sighup_pending:
            registry.sighup_pending = False
            app.state.on_sighup()
        try:
            yield
        finally:
            if app.state.sighup:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            registry.close()

    app = FastAPI(title="fedtune inference", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.registry, app.state.metrics = settings, registry, metrics
    app.state.reload_tasks = set()
    app.state.sighup = app.state.loaded = False
    app.state.grpc_port = None
    install_handlers(app)
    app.include_router(v1_router)
    app.include_router(v2_router)
    app.include_router(admin_router)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", dependencies=[Depends(require_key_for_metrics)],
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
