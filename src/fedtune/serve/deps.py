"""Request dependencies: the optional API key and the admin key (Authorization: Bearer <key> or
X-API-Key: <key>)."""

from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

bearer = HTTPBearer(auto_error=False, description="the service's API key (or, on /v1/admin, the admin key)")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="the service's API key (or, on /v1/admin, the admin key)")


def key_matches(expected: str, given: list[str | None]) -> bool:
    """Whether one of the keys a client sent is `expected` (constant-time per key)."""
    return any(secrets.compare_digest(k.encode("utf-8", "replace"), expected.encode()) for k in given if k)


def check_key(expected: str, creds: HTTPAuthorizationCredentials | None, header_key: str | None,
              what: str = "API key") -> None:
    if not key_matches(expected, [creds.credentials if creds else None, header_key]):
        raise ApiError(401, "unauthorized", f"missing or wrong {what} (send 'Authorization: Bearer <key>' or "
                                            f"'X-API-Key: <key>')", headers={"WWW-Authenticate": "Bearer"})


async def require_key(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                      header_key: str | None = Depends(api_key_header)) -> None:
    expected = request.app.state.settings.key()
    if expected is not None:
        check_key(expected, creds, header_key)


async def require_key_for_metrics(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                                  header_key: str | None = Depends(api_key_header)) -> None:
    if request.app.state.settings.metrics_auth:
        await require_key(request, creds, header_key)


async def require_admin(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                        header_key: str | None = Depends(api_key_header)) -> None:
    """The admin key, always: an open inference API does not open the admin routes."""
    expected = request.app.state.settings.admin()
    if expected is None:
        raise ApiError(403, "admin_disabled", "admin routes are disabled: the service has no admin key (set "
                                              "FEDTUNE_ADMIN_KEY or FEDTUNE_ADMIN_KEY_FILE); SIGHUP still reloads "
                                              "the bundles being served")
    check_key(expected, creds, header_key, "admin key")
