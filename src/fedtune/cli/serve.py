"""`fedtune serve`: the inference service (FastAPI + uvicorn) over export bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app


@app.command("serve")
def serve_cmd(
    bundle: Annotated[Optional[list[Path]], typer.Option(
        "--bundle", help="an export bundle folder (repeat: one per kind); default FEDTUNE_BUNDLES")] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address [FEDTUNE_HOST, 127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="port [FEDTUNE_PORT, 8000]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N [FEDTUNE_DEVICE]")] = None,
    backend: Annotated[Optional[str], typer.Option(
        help="trunk backend on CPU: fp32 | bf16 | int8 | onnx-int8 (docs/serve.md) [FEDTUNE_BACKEND, fp32]")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(
        help="also serve the Open Inference Protocol over gRPC on this port [FEDTUNE_GRPC_PORT, off]")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        help="require this key on /v1 and /v2 infer [FEDTUNE_API_KEY; prefer the env var]")] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="items per micro-batch [FEDTUNE_MAX_BATCH, 64]")] = None,
    max_wait_ms: Annotated[Optional[float], typer.Option(
        help="wait for a batch to fill [FEDTUNE_MAX_WAIT_MS, 5]")] = None,
    max_items: Annotated[Optional[int], typer.Option(help="items per request [FEDTUNE_MAX_ITEMS, 256]")] = None,
    max_body_bytes: Annotated[Optional[int], typer.Option(
        help="request body limit [FEDTUNE_MAX_BODY_BYTES, 1 MiB]")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="residues per chain [FEDTUNE_MAX_LENGTH, 256]")] = None,
    embedding_cache_mb: Annotated[Optional[float], typer.Option(
        help="per-chain embedding cache in MiB, 0 = off [FEDTUNE_EMBEDDING_CACHE_MB, 64]")] = None,
    metrics_auth: Annotated[Optional[bool], typer.Option(
        "--metrics-auth/--no-metrics-auth", help="require the API key on /metrics [FEDTUNE_METRICS_AUTH]")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="uvicorn log level [FEDTUNE_LOG_LEVEL, info]")] = None,
):
    """Serve bundles over HTTP: /v1 (JSON), /v2 (KServe Open Inference Protocol), /metrics (Prometheus); with
    --grpc-port, the Open Inference Protocol over gRPC too.
    SIGHUP or POST /v1/admin/reload re-reads the bundles without dropping a request."""
    import signal
    early_sighup: list[int] = []
    if hasattr(signal, "SIGHUP"):              # first thing: a SIGHUP while importing or loading is not fatal
        signal.signal(signal.SIGHUP, lambda signum, frame: early_sighup.append(signum))
    from pydantic import ValidationError

    from fedtune.bundle import BundleError
    from fedtune.serve.registry import Registry, ReloadError
    from fedtune.serve.server import run_server
    from fedtune.serve.settings import ServeSettings

    overrides = {"bundles": [str(b) for b in bundle] if bundle else None, "host": host, "port": port,
                 "device": device, "backend": backend, "grpc_port": grpc_port, "api_key": api_key, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                 "max_items": max_items, "max_body_bytes": max_body_bytes, "max_length": max_length,
                 "embedding_cache_mb": embedding_cache_mb, "metrics_auth": metrics_auth, "log_level": log_level}
    try:
        settings = ServeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:       # messages only: pydantic's own text echoes the input, keys included
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        typer.secho(f"error: invalid setting: {problems}", fg="red", err=True)
        raise typer.Exit(2)
    if not settings.bundles:
        typer.secho("error: no bundle given (--bundle DIR or FEDTUNE_BUNDLES)", fg="red", err=True)
        raise typer.Exit(2)
    from fedtune.serve.app import defer_sighup
    from fedtune.serve.metrics import ServeMetrics
    registry = Registry(settings, ServeMetrics())
    defer_sighup(registry)                    # a SIGHUP while loading reloads once serving; never kills the process
    if early_sighup:
        registry.sighup_pending = True
    if settings.key() is None:
        typer.secho("warning: no FEDTUNE_API_KEY: /v1 and /v2 inference are open to anyone who reaches the port",
                    fg="yellow", err=True)
    if settings.admin() is None:
        typer.echo("admin routes disabled (no FEDTUNE_ADMIN_KEY); SIGHUP reloads the bundles", err=True)
    typer.echo(f"loading {', '.join(settings.bundles)}")
    try:
        registry.load(settings.bundles)       # fail fast, with the reason, before binding the port
    except (ReloadError, BundleError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"serving {', '.join(f'{n} ({m.version}) from {m.path}' for n, m in registry.models.items())} "
               f"on http://{settings.host}:{settings.port}"
               + (f" and grpc://{settings.host}:{settings.grpc_port}" if settings.grpc_port is not None else ""))
    run_server(settings, registry)
