"""The Open Inference Protocol over gRPC: KServe v2's `inference.GRPCInferenceService` (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on its own port (`--grpc-port`).

Same models, auth and metrics as HTTP: it runs on the app's event loop beside uvicorn, reads the app's
registry and settings, checks the API key from the call's metadata (`authorization: Bearer <key>` or
`x-api-key: <key>`) where HTTP checks it (infer), counts every call in the same Prometheus registry, and
hands an infer request to the one code path of the HTTP route (`routes_v2.infer_model`) after turning the
protobuf into the same `InferRequest`. Failures become gRPC status codes (`STATUS`), never a crash. The
message classes are the ones `tritonclient[grpc]` generates from the same proto (package `inference`).
"""

from __future__ import annotations

import json
import logging
import time

import grpc
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from .. import __version__ as fedtune_version
from .deps import key_matches
from .errors import ApiError
from .oip_binary import FIXED, decode_tensor, encode_tensor
from .routes_v2 import find_model, infer_model, metadata
from .schemas import InferRequest

log = logging.getLogger(__name__)

STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
          422: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE,
          504: grpc.StatusCode.DEADLINE_EXCEEDED}
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _param_value(p: pb.InferParameter):
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _params(m) -> dict | None:
    return {k: _param_value(v) for k, v in m.items()} or None


def _set_param(target: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int) and -2**63 <= value < 2**63:
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        target.string_param = json.dumps(value, separators=(",", ":"), default=str)


def _input_data(t, raw: bytes | None, max_items: int) -> list:
    if raw is not None:
        return decode_tensor(raw, t.datatype, t.name[:100], max_items)
    field = CONTENTS.get(t.datatype)
    if field is None:
        raise ApiError(400, "bad_datatype", f"input {t.name[:100]!r}: datatype {t.datatype[:40]!r} is not supported")
    values = list(getattr(t.contents, field))
    if len(values) > max_items:
        raise ApiError(413, "too_many_items", f"input {t.name[:100]!r} holds more than the limit of {max_items} "
                                              f"elements")
    if field == "bytes_contents":
        try:
            return [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise ApiError(400, "bad_data", f"input {t.name[:100]!r}: BYTES elements must be UTF-8 text") from None
    return values


def to_request(msg: pb.ModelInferRequest, max_items: int) -> InferRequest:
    """The protobuf request as the HTTP route's `InferRequest` (tensor data from `contents` or, as tritonclient
    sends it, from `raw_input_contents`: one raw buffer per input, in order). 400 on anything malformed."""
    raws = list(msg.raw_input_contents)
    if raws and len(raws) != len(msg.inputs):
        raise ApiError(400, "bad_binary", f"{len(raws)} raw_input_contents for {len(msg.inputs)} inputs: give one "
                                          f"per input, or none")
    inputs = [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": _params(t.parameters),
               "data": _input_data(t, raws[i] if raws else None, max_items)} for i, t in enumerate(msg.inputs)]
    outputs = [{"name": o.name, "parameters": _params(o.parameters)} for o in msg.outputs] or None
    try:
        return InferRequest(id=msg.id or None, parameters=_params(msg.parameters), inputs=inputs, outputs=outputs)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10])
        raise ApiError(400, "invalid_request", f"invalid infer request: {problems}") from None


def to_response(resp) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id or "")
    for k, v in (resp.parameters or {}).items():
        _set_param(out.parameters[k], v)
    for o in resp.outputs:
        if o.datatype not in FIXED and o.datatype != "BYTES":
            raise ValueError(f"output {o.name!r}: unsupported datatype {o.datatype!r}")
        out.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
        out.raw_output_contents.append(encode_tensor(o.datatype, o.data))
    return out


def _key_from(context) -> list[str]:
    given = []
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == "x-api-key":
            given.append(value)
        elif key == "authorization":
            scheme, _, cred = value.partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                given.append(cred.strip())
    return given


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six methods of the protocol; the others answer UNIMPLEMENTED (the generated base class)."""

    def __init__(self, registry, settings, metrics):
        self.registry, self.settings, self.metrics = registry, settings, metrics

    async def _call(self, method: str, context, work, *, auth: bool = False):
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            if auth and (expected := self.settings.key()) is not None and not key_matches(expected, _key_from(context)):
                raise ApiError(401, "unauthorized", "missing or wrong API key (send metadata 'authorization: "
                                                    "Bearer <key>' or 'x-api-key: <key>')")
            return await work()
        except ApiError as exc:
            code = STATUS.get(exc.status, grpc.StatusCode.INTERNAL)
            message = exc.message
        except Exception as exc:               # never a crash: the caller gets INTERNAL, the log the traceback
            log.exception("gRPC %s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"{method} failed: {type(exc).__name__}"
        finally:
            if self.metrics is not None:
                self.metrics.observe_grpc(method, code.name, time.perf_counter() - start)
        await context.abort(code, message[:2000])

    async def ServerLive(self, request, context):
        async def work():
            return pb.ServerLiveResponse(live=not self.registry.dead())
        return await self._call("ServerLive", context, work)

    async def ServerReady(self, request, context):
        async def work():
            return pb.ServerReadyResponse(ready=bool(self.registry.models))
        return await self._call("ServerReady", context, work)

    async def ModelReady(self, request, context):
        async def work():          # an unknown model is not ready (as the HTTP clients read the route's 404)
            m = self.registry.get(request.name)
            ready = m is not None and request.version in ("", m.version, m.bundle.digest) and m.batcher.alive
            return pb.ModelReadyResponse(ready=ready)
        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request, context):
        async def work():
            return pb.ServerMetadataResponse(name="fedtune", version=fedtune_version, extensions=[])
        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request, context):
        async def work():
            md = metadata(find_model(self.registry, request.name, request.version or None))
            tensors = lambda specs: [pb.ModelMetadataResponse.TensorMetadata(  # noqa: E731
                name=t.name, datatype=t.datatype, shape=t.shape) for t in specs]
            return pb.ModelMetadataResponse(name=md.name, versions=md.versions, platform=md.platform,
                                            inputs=tensors(md.inputs), outputs=tensors(md.outputs))
        return await self._call("ModelMetadata", context, work)

    async def ModelInfer(self, request, context):
        async def work():
            req = to_request(request, self.settings.max_items)
            resp = await infer_model(self.registry, self.settings, request.model_name, req,
                                     request.model_version or None)
            return to_response(resp)
        return await self._call("ModelInfer", context, work, auth=True)


async def start_grpc(registry, settings, metrics, host: str | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running event loop: (server, bound port). Messages are limited to the
    HTTP body limit (RESOURCE_EXHAUSTED beyond)."""
    limit = settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024))])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(registry, settings, metrics), server)
    address = f"{host or settings.host}:{settings.grpc_port}"
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"gRPC: cannot bind {address}")
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d", host or settings.host, port)
    return server, port

