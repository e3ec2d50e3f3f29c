"""/v1/admin: hot reload, behind the admin key (never the inference key); reload paths confined to the
configured bundle roots."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Body, Depends, Request

from .deps import require_admin
from .errors import ApiError
from .registry import PathRefused, ReloadError
from .schemas import ErrorResponse, ReloadRequest, ReloadResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses={
    401: {"model": ErrorResponse, "description": "admin key missing or wrong"},
    403: {"model": ErrorResponse, "description": "no admin key configured, or a path outside the bundle roots"}})


@router.post("/reload", response_model=ReloadResponse, summary="Hot-reload bundles",
             responses={422: {"model": ErrorResponse, "description": "reload refused; the old models keep serving"}})
async def reload(request: Request, body: ReloadRequest | None = Body(None)) -> ReloadResponse:
    """Load the given bundles (or re-read the folders being served) fully, verify digests, warm up, then swap
    atomically. A path must resolve inside FEDTUNE_BUNDLE_ROOTS. On any failure the old models keep serving
    and the error says why. SIGHUP does the same (without a body)."""
    registry = request.app.state.registry
    paths = body.bundles if body else None
    try:
        if paths:
            registry.check_roots(paths)
    except PathRefused as exc:
        raise ApiError(403, "path_not_allowed", str(exc), {"roots": [str(r) for r in registry.roots()]}) from None
    start = time.perf_counter()
    try:
        models = await asyncio.to_thread(registry.load, paths)
    except ReloadError as exc:
        serving = {n: m.bundle.digest for n, m in registry.models.items()}
        raise ApiError(422, "reload_failed", f"reload refused, still serving the previous models: {exc}",
                       {"serving": serving}) from None
    return ReloadResponse(ok=True, models=models, seconds=round(time.perf_counter() - start, 3))
