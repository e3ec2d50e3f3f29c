"""FastAPI inference service over fedtune export bundles (see docs/serve.md).

settings (FEDTUNE_* environment), registry (loaded models, hot reload), batcher (micro-batching worker per
model), metrics (Prometheus), schemas, kinds (what a task kind's REST side gives: `fedtune.tasks.<kind>_api`),
predict (the generic steps of a prediction), routes_v1 / routes_v2 (KServe Open Inference Protocol; one route
per kind), app, server.
Heavy imports (torch, transformers) happen when a model is loaded, not on `import fedtune.serve`.
"""

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "BackgroundServer", "run_server"]


def __getattr__(name):
    if name == "create_app":
        from .app import create_app
        return create_app
    if name in ("BackgroundServer", "run_server"):
        from . import server
        return getattr(server, name)
    raise AttributeError(name)
