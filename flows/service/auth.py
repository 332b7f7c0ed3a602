"""Bearer API keys: ``Authorization: Bearer <key>`` must name one of the configured keys."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flows.service.errors import APIError

_bearer = HTTPBearer(auto_error=False, description="One of the keys in the COVERCRAFT_API_KEYS variable.")


class KeyChecker:
    """Checks a presented key against the accepted set in constant time per key."""

    def __init__(self, keys: frozenset[str], required: bool):
        self.keys = keys
        self.required = required

    def check(self, presented: str | None) -> None:
        if not self.required:
            return
        if not presented:
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
                "(one of the keys in the service's API key variable).",
                type="invalid_request_error",
                code="missing_api_key",
            )
        ok = False
        for key in self.keys:
            # No early exit: the time taken does not reveal which key (or how much of it) matched.
            ok |= hmac.compare_digest(presented.encode(), key.encode())
        if not ok:
            raise APIError(
                401,
                f"Incorrect API key provided: {_redact(presented)}.",
                type="invalid_request_error",
                code="invalid_api_key",
            )


def _redact(key: str) -> str:
    return key[:3] + "*" * 4 + key[-2:] if len(key) > 8 else "*" * len(key)


async def require_key(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """FastAPI dependency for the authenticated routes."""
    checker: KeyChecker = request.app.state.keys
    checker.check(creds.credentials if creds else None)
