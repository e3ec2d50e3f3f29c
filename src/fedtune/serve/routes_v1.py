"""/v1: one prediction route per task kind (/v1/<kind>/predict), model cards (the admin routes are in
routes_admin)."""

from __future__ import annotations

import datetime as dt
import inspect

from fastapi import APIRouter, Depends, Request

from ..tasks import get, kinds
from .batcher import Job
from .deps import require_key
from .kinds import KindApi
from .predict import check_count, model_or_404, resolve_heads, run
from .registry import LoadedModel
from .schemas import ErrorResponse, ModelCard, ModelsResponse

ERRORS = {401: {"model": ErrorResponse, "description": "API key missing or wrong"},
          404: {"model": ErrorResponse, "description": "unknown model, site, task or assay (lists the known ones)"},
          413: {"model": ErrorResponse, "description": "too many items or body too large"},
          422: {"model": ErrorResponse, "description": "invalid sequence/text (names index, chain, position)"}}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses={401: ERRORS[401]})


def predict_endpoint(kind: str, api: KindApi):
    """The handler of /v1/<kind>/predict, typed with the kind's request and response bodies (so OpenAPI shows
    them): model -> item count -> the kind's validation -> head sets -> the kind's options -> batcher -> the
    kind's response."""
    async def endpoint(request: Request, body):
        registry, settings = request.app.state.registry, request.app.state.settings
        model_or_404(registry, kind)
        check_count(api.count(body), settings.max_items, api.noun)
        items = api.items(body, settings)

        def build(model: LoadedModel):
            heads = resolve_heads(model, body.site)
            opts, context = api.job(model, body, heads)
            return Job(items=items, head_sets=tuple(heads.names), opts=opts), (heads, context)

        model, (heads, context), result = await run(registry, kind, build)
        return api.respond(model, body, heads, context, result)

    endpoint.__signature__ = inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
         inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=api.request_model)],
        return_annotation=api.response_model)
    return endpoint


def add_predict_routes(router: APIRouter) -> None:
    for kind in kinds():
        api = get(kind).api
        router.add_api_route(f"/{kind}/predict", predict_endpoint(kind, api), methods=["POST"],
                             name=f"predict_{kind}", response_model=api.response_model, responses=ERRORS,
                             tags=["v1"], summary=api.summary, description=inspect.cleandoc(api.description))


add_predict_routes(router)


PRIVATE_PROVENANCE = frozenset({"data_digests"})    # per-site data hashes: would confirm a guessed dataset


def served_provenance(value):
    """The bundle's provenance without the keys that must not leave the service (at any depth: older bundles
    wrote them)."""
    if isinstance(value, dict):
        return {k: served_provenance(v) for k, v in value.items() if k not in PRIVATE_PROVENANCE}
    if isinstance(value, list):
        return [served_provenance(v) for v in value]
    return value


def model_card(m: LoadedModel) -> ModelCard:
    man = m.bundle.manifest
    trunk = {k: v for k, v in man.get("trunk", {}).items() if k != "files"}
    return ModelCard(
        name=m.name, kind=m.bundle.kind, version=m.version, digest=m.bundle.digest, path=str(m.path), trunk=trunk,
        backend=m.backend,
        tasks=man.get("tasks"), assays=man.get("assays"), labels=man.get("labels"), sites=m.bundle.sites,
        head_sets=list(m.bundle.head_sets), heads_mode=man.get("heads", {}).get("mode"),
        metrics=man.get("metrics") or {}, provenance=served_provenance(man.get("provenance") or {}),
        created=man.get("created"),
        loaded_at=dt.datetime.fromtimestamp(m.loaded_at, dt.timezone.utc).isoformat(timespec="seconds"),
        load_seconds=round(m.load_seconds, 3))


@router.get("/models", response_model=ModelsResponse, tags=["v1"], summary="The bundles being served")
async def list_models(request: Request) -> ModelsResponse:
    return ModelsResponse(models=[model_card(m) for m in request.app.state.registry.models.values()])
