"""Bearer-token auth for ``/v1/*`` and ``/openai/*`` as a pure ASGI middleware.

A middleware rather than a dependency on every route: it costs nothing when auth is
off (it is not installed), and one header lookup when on, where a dependency costs a
round of FastAPI's dependency solving on every request. It also answers 401 for
unknown ``/v1`` paths, so routes are not enumerable without a key.

The dashboard signs a person in by keeping their API key in a cookie (HttpOnly,
SameSite=Strict). The cookie counts for reads only (GET and HEAD): the browser can then
follow a job's stream, open a report and download checkpoint files, while every write
still needs the ``Authorization`` header, which no other site can make a browser send.
"""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import SimpleCookie
from urllib.parse import unquote

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from core.inference.protocol import error_body

ANONYMOUS = "anonymous"
#: the API, and the OpenAI-compatible inference endpoint beside it
PROTECTED_PREFIXES = ("/v1/", "/openai/")
#: the dashboard's sign-in cookie: the API key, percent-encoded
SESSION_COOKIE = "obliviate_key"
READ_METHODS = ("GET", "HEAD")


def principal_of(token: str) -> str:
    """What idempotency keys are scoped to: a digest, never the key itself."""
    return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]


def authenticate(token: str, api_keys: list[str]) -> str | None:
    """The principal of ``token`` when it is one of ``api_keys``, else None."""
    return principal_of(token) if _known(token.encode(), [k.encode() for k in api_keys]) else None


def session_token(cookie_header: str | None) -> str | None:
    """The API key kept by the dashboard's sign-in, from a ``Cookie`` header."""
    if not cookie_header:
        return None
    cookie = SimpleCookie()
    try:
        cookie.load(cookie_header)
    except Exception:  # noqa: BLE001 - a malformed header is no credential
        return None
    morsel = cookie.get(SESSION_COOKIE)
    return unquote(morsel.value) if morsel is not None and morsel.value else None


def _known(token: bytes, keys: list[bytes]) -> bool:
    # Compare against every key in constant time, so timing reveals nothing.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, api_keys: list[str]):
        self.app = app
        self.keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = self._bearer_token(scope)
        if token is None and scope["method"] in READ_METHODS:
            token = self._session_token(scope)
        if token is None:
            message = "send an API key as 'Authorization: Bearer <key>'"
        elif not _known(token, self.keys):
            message = "invalid API key"
        else:
            scope.setdefault("state", {})["principal"] = principal_of(token.decode())
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": "Bearer"}
        if scope["path"].startswith("/openai/"):  # in the shape OpenAI's clients parse
            body = error_body(message, "authentication_error", None, "invalid_api_key")
            response = JSONResponse(body, status_code=401, headers=headers)
        else:
            response = error_response(401, "unauthorized", message, headers=headers)
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

    @staticmethod
    def _session_token(scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"cookie":
                token = session_token(value.decode("latin-1"))
                return token.encode() if token else None
        return None
