"""Bearer-token auth for ``/v1/*`` as a pure ASGI middleware.

A middleware rather than a dependency on every route: it costs nothing when auth is
off (it is not installed), and one header lookup when on, where a dependency costs a
round of FastAPI's dependency solving on every request. It also answers 401 for
unknown ``/v1`` paths, so routes are not enumerable without a key.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response

ANONYMOUS = "anonymous"
PROTECTED_PREFIX = "/v1/"


def principal_of(token: str) -> str:
    """What idempotency keys are scoped to: a digest, never the key itself."""
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, api_keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        token = self._bearer_token(scope)
        if token is None:
            message = "send an API key as 'Authorization: Bearer <key>'"
        elif not self._known(token):
            message = "invalid API key"
        else:
            scope.setdefault("state", {})["principal"] = principal_of(token.decode())
            await self.app(scope, receive, send)
            return
        response = error_response(
            401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)

    @staticmethod
    def _bearer_token(scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                token = token.strip()
                if scheme.lower() == b"bearer" and token:
                    return token
                return None
        return None

    def _known(self, token: bytes) -> bool:
        # Compare against every key in constant time, so timing reveals nothing.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        return matched
