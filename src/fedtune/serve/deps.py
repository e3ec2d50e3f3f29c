"""Request dependencies: the optional API key (Authorization: Bearer <key> or X-API-Key: <key>)."""

from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

bearer = HTTPBearer(auto_error=False, description="the service's API key as a Bearer token")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")


def check_key(request: Request, creds: HTTPAuthorizationCredentials | None, header_key: str | None) -> None:
    expected = request.app.state.settings.key()
    if expected is None:
        return
    given = [k for k in (creds.credentials if creds else None, header_key) if k]
    if not any(secrets.compare_digest(k.encode(), expected.encode()) for k in given):
        raise ApiError(401, "unauthorized", "missing or wrong API key (send 'Authorization: Bearer <key>' or "
                                            "'X-API-Key: <key>')", headers={"WWW-Authenticate": "Bearer"})


async def require_key(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                      header_key: str | None = Depends(api_key_header)) -> None:
    check_key(request, creds, header_key)


async def require_key_for_metrics(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                                  header_key: str | None = Depends(api_key_header)) -> None:
    if request.app.state.settings.metrics_auth:
        check_key(request, creds, header_key)
