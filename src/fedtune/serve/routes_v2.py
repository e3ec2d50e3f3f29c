"""KServe v2 / Open Inference Protocol: health, model metadata, infer with BYTES inputs.

A model is named by its kind; the kind's API (`fedtune.tasks.<kind>_api`, `serve.kinds.KindApi`) says its
input tensors (BYTES, shape [N] or [N, 1], one element per item), its output tensors and its own request
parameters. Every kind takes the parameter `site` (a site's heads). Infer bodies may use the binary tensor
data extension, in and out (oip_binary.py), as tritonclient does by default.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from .. import __version__ as fedtune_version
from ..tasks import get, kinds
from .batcher import Job
from .deps import api_key_header, bearer, require_key
from .errors import ApiError, error_body
from .oip_binary import HEADER_LENGTH, binary_outputs, decode_request, encode_response
from .predict import check_count, model_or_404, param, resolve_heads, run
from .registry import LoadedModel
from .schemas import ErrorResponse, InferRequest, InferResponse, ModelMetadata

ERRORS = {400: {"model": ErrorResponse, "description": "malformed tensors or binary tensor data"},
          404: {"model": ErrorResponse, "description": "unknown model, version, site, task or output"},
          413: {"model": ErrorResponse, "description": "too many items or body too large"},
          415: {"model": ErrorResponse, "description": "unsupported Content-Encoding"},
          422: {"model": ErrorResponse, "description": "invalid sequence or text"}}


class _DecodedRequest(Request):
    """The request as FastAPI's JSON body parsing expects it: JSON content type, the decoded body as its JSON."""

    def __init__(self, request: Request, raw: bytes, decoded):
        drop = {b"content-type", b"content-encoding", HEADER_LENGTH.lower().encode()}
        headers = [(k, v) for k, v in request.scope["headers"] if k not in drop]
        super().__init__({**request.scope, "headers": [*headers, (b"content-type", b"application/json")]},
                         request.receive)
        self._body, self._decoded = raw, decoded

    async def json(self):
        return self._decoded


class OipRoute(APIRoute):
    """POST bodies are read as the Open Inference Protocol's clients send them (any Content-Type, optionally
    compressed, optionally followed by binary tensor data); the API key is checked before the body is parsed."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        if "POST" not in self.methods:
            return handler

        async def route(request: Request) -> Response:
            await require_key(request, await bearer(request), await api_key_header(request))
            raw = await request.body()
            if not raw:
                return await handler(request)
            settings = request.app.state.settings
            decoded = decode_request(raw, request.headers, settings.max_body_bytes, settings.max_items)
            return await handler(_DecodedRequest(request, raw, decoded))

        return route


router = APIRouter(prefix="/v2", tags=["v2 (KServe Open Inference Protocol)"], route_class=OipRoute)
Name = Path(description=f"the model: {' or '.join(kinds())}", examples=list(kinds()))
Version = Path(description="the model version (the bundle digest's first 12 hex digits, or all of it)")


@router.get("", summary="Server metadata")
async def server_metadata() -> dict:
    return {"name": "fedtune", "version": fedtune_version, "extensions": []}


@router.get("/health/live", summary="Liveness: false (503) once a model's worker has died",
            responses={503: {"model": ErrorResponse}})
async def live(request: Request):
    if dead := request.app.state.registry.dead():
        return JSONResponse(error_body(f"the worker of {dead} has stopped; restart the service", "not_live"), 503)
    return {"live": True}


@router.get("/health/ready", summary="Readiness: every bundle loaded and warmed up",
            responses={503: {"model": ErrorResponse}})
async def ready(request: Request):
    if not request.app.state.registry.models:
        return JSONResponse(error_body("no model loaded", "not_ready"), 503)
    return {"ready": True}


def _model(request: Request, name: str, version: str | None = None) -> LoadedModel:
    return find_model(request.app.state.registry, name, version)


def find_model(registry, name: str, version: str | None = None) -> LoadedModel:
    """The model serving `name` (and `version`, when given); ApiError 404 otherwise."""
    model = model_or_404(registry, name)
    if version is not None and version not in (model.version, model.bundle.digest):
        raise ApiError(404, "unknown_version", f"model {name!r} has no version {version!r}; serving "
                                               f"{model.version}", {"known": [model.version]})
    return model


def metadata(m: LoadedModel) -> ModelMetadata:
    api = get(m.bundle.kind).api
    inputs = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in api.v2_inputs(m)]
    return ModelMetadata(name=m.name, versions=[m.version], platform="pytorch", inputs=inputs,
                         outputs=api.v2_outputs(m),
                         parameters={"sites": m.bundle.sites, "digest": m.bundle.digest, "backend": m.backend})


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS, summary="Model metadata")
async def model_metadata(request: Request, name: str = Name) -> ModelMetadata:
    return metadata(_model(request, name))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS,
            summary="Model metadata (one version)")
async def model_version_metadata(request: Request, name: str = Name, version: str = Version) -> ModelMetadata:
    return metadata(_model(request, name, version))


@router.get("/models/{name}/ready", responses=ERRORS, summary="Model readiness")
async def model_ready(request: Request, name: str = Name) -> dict:
    m = _model(request, name)
    return {"name": m.name, "ready": True}


def _flatten(data) -> list:
    """Row-major flattening of nested lists, iterative (a deeply nested body must not exhaust the stack)."""
    out, stack = [], [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _bytes_input(req: InferRequest, kind: str, wanted: tuple[str, ...]) -> dict[str, list[str]]:
    given = {i.name: i for i in req.inputs}
    extra = sorted(set(given) - set(wanted))
    missing = [n for n in wanted if n not in given]
    if extra or missing or len(given) != len(req.inputs):
        raise ApiError(400, "bad_inputs", f"the {kind} model takes BYTES inputs {list(wanted)} (each once); "
                                          f"missing {missing}, unexpected {extra}")
    out = {}
    for name in wanted:
        t = given[name]
        if t.datatype != "BYTES":
            raise ApiError(400, "bad_datatype", f"input {name!r} must be BYTES, not {t.datatype!r}")
        data = _flatten(t.data)
        if any(d < 0 for d in t.shape) or math.prod(t.shape) != len(data) or (len(t.shape) == 2 and t.shape[1] != 1) \
                or len(t.shape) not in (1, 2):
            raise ApiError(400, "bad_shape", f"input {name!r}: shape {t.shape} must be [N] or [N, 1] and match "
                                             f"its {len(data)} elements")
        if not all(isinstance(d, str) for d in data):
            raise ApiError(400, "bad_data", f"input {name!r}: BYTES elements must be strings")
        out[name] = data
    if len({len(v) for v in out.values()}) > 1:
        raise ApiError(400, "bad_shape", f"inputs {list(wanted)} must have the same length")
    return out


async def infer_model(registry, settings, name: str, req: InferRequest, version: str | None) -> InferResponse:
    """One inference request, whatever its transport (HTTP here, gRPC in `grpc_oip`): the model, its BYTES
    inputs, the item count, the kind's items and options, the batcher run and the output tensors."""
    model = find_model(registry, name, version)
    api = get(model.bundle.kind).api
    inputs = _bytes_input(req, name, api.v2_inputs(model))
    n = len(next(iter(inputs.values())))
    check_count(n, settings.max_items, "items")
    site = param(req, "site", str)
    items, params = api.v2_items(inputs, req, settings)

    def build(model: LoadedModel):
        heads = resolve_heads(model, site)
        opts, context = api.v2_job(model, req, params, heads)
        return Job(items=items, head_sets=tuple(heads.names), opts=opts), (heads, context)

    model, (heads, context), result = await run(registry, name, build)
    outputs = api.v2_tensors(model, req, heads, context, result, n)
    return InferResponse(model_name=model.name, model_version=model.version, id=req.id,
                         parameters={"heads": heads.mode, "head_sets": heads.names,
                                     "digest": model.bundle.digest, "backend": model.backend}, outputs=outputs)


async def _infer(request: Request, name: str, req: InferRequest, version: str | None) -> InferResponse | Response:
    registry, settings = request.app.state.registry, request.app.state.settings
    model = find_model(registry, name, version)
    api = get(model.bundle.kind).api
    binary = binary_outputs(req.parameters, req.outputs, [o["name"] for o in api.v2_outputs(model)])
    response = await infer_model(registry, settings, name, req, version)
    if not binary:
        return response
    payload, header_length = encode_response(response.model_dump(), binary)
    return Response(payload, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_length)})


@router.post("/models/{name}/infer", response_model=InferResponse, responses=ERRORS,
             dependencies=[Depends(require_key)], summary="Inference")
async def infer(request: Request, req: InferRequest, name: str = Name) -> InferResponse | Response:
    return await _infer(request, name, req, None)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferResponse, responses=ERRORS,
             dependencies=[Depends(require_key)], summary="Inference (one version)")
async def infer_version(request: Request, req: InferRequest, name: str = Name,
                       version: str = Version) -> InferResponse | Response:
    return await _infer(request, name, req, version)
