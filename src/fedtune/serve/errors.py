"""One error shape for every failure: {"error": message, "code": ..., "details": ...} (the `error` field is
what the KServe v2 protocol asks for), and the request-body size limit.

Error bodies echo parts of the request (a residue, a validation error's input); `SafeJSONResponse` renders
anything a client can send (a lone surrogate, NaN, Infinity) as valid JSON, so an error never becomes a 500."""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


def json_safe(value):
    """`value` with every non-finite float as a string and every lone surrogate escaped (backslash form):
    what JSON (and UTF-8) can carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """JSONResponse that never fails to render what a client sent back to it (see json_safe)."""

    def render(self, content) -> bytes:
        return json.dumps(json_safe(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=str).encode("utf-8")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def error_body(message: str, code: str, details=None) -> dict:
    body = {"error": message, "code": code}
    if details is not None:
        body["details"] = details
    return body


def _first_validation_message(errors: list[dict]) -> str:
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    return f"invalid request: {where}: {e.get('msg', 'invalid')}"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return SafeJSONResponse(error_body(exc.message, exc.code, exc.details), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
        for e in errors:    # echoing a megabyte of input back helps nobody
            if isinstance(e, dict) and isinstance(e.get("input"), (str, list, dict)) and len(str(e["input"])) > 200:
                e["input"] = str(e["input"])[:200] + "..."
        return SafeJSONResponse(error_body(_first_validation_message(errors), "invalid_request", errors), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        return SafeJSONResponse(error_body(str(exc.detail), code), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return SafeJSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal"), 500)


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: by Content-Length up front, and by counting what actually arrives
    (chunked uploads, lying headers). The body is buffered (at most max_bytes) and replayed to the app.

    Before answering 413 the rest of the body is read and discarded (up to DRAIN_FACTOR x max_bytes, never
    stored): closing a socket with unread data makes the kernel reset the connection, and the client would
    see a reset instead of the 413."""

    METHODS = {"POST", "PUT", "PATCH"}
    DRAIN_FACTOR = 64

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send, status: int, message: str, code: str, close: bool) -> None:
        body = json.dumps(error_body(message, code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _drain(self, receive, more: bool, seen: int) -> bool:
        """Discard the rest of the body; False when it was too large to drain (the connection is closed)."""
        while more:
            if seen > self.DRAIN_FACTOR * self.max_bytes:
                return False
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)
        return True

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in self.METHODS:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._reply(send, 400, "invalid Content-Length header", "bad_request", close=True)
                return
            if declared > self.max_bytes:
                drained = declared <= self.DRAIN_FACTOR * self.max_bytes and await self._drain(receive, True, 0)
                await self._reply(send, 413, f"request body of {declared} bytes exceeds the limit of "
                                             f"{self.max_bytes} bytes", "body_too_large", close=not drained)
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            more = message.get("more_body", False)
            if total > self.max_bytes:
                chunks.clear()
                drained = await self._drain(receive, more, total)
                await self._reply(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes",
                                  "body_too_large", close=not drained)
                return
            chunks.append(chunk)
            if not more:
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
