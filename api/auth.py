"""Bearer-token authentication for ``/v1/*`` and ``/openai/*`` as a pure ASGI middleware.

A middleware rather than a dependency: it answers 401 before routing, so unknown
``/v1`` paths are not enumerable without a key, and it binds the caller's tenant for
everything the request runs (``core.tenancy``). The keys are the keyring's
(``api.keyring``); roles and tenants are checked after routing (``api.authz``).

The dashboard signs a person in by keeping their API key in a cookie (HttpOnly,
SameSite=Strict). The cookie counts for reads only (GET and HEAD): the browser can then
follow a job's stream, open a report and download checkpoint files, while every write
still needs the ``Authorization`` header, which no other site can make a browser send.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import unquote

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response
from api.keyring import ANONYMOUS, OPEN_CALLER, Keyring, principal_of
from core.inference.protocol import error_body
from core.logs import bind as bind_log_context
from core.tenancy import bind_tenant

__all__ = ["ANONYMOUS", "BearerAuthMiddleware", "principal_of", "session_token"]

#: the API, and the OpenAI-compatible inference endpoint beside it
PROTECTED_PREFIXES = ("/v1/", "/openai/")
#: the dashboard's sign-in cookie: the API key, percent-encoded
SESSION_COOKIE = "obliviate_key"
READ_METHODS = ("GET", "HEAD")


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


class BearerAuthMiddleware:
    """Who is calling: a ``Caller`` on ``scope["state"]["caller"]`` and the caller's
    tenant bound for the request (``core.tenancy``); 401 for a missing or unknown key.
    What the caller may do is decided after routing (``api.authz``)."""

    def __init__(self, app: ASGIApp, keyring: Keyring):
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        resources = scope["app"].state.resources
        caller = message = None
        if await self.keyring.is_open(resources.read_database):
            caller = OPEN_CALLER
        else:
            token = self._bearer_token(scope)
            if token is None and scope["method"] in READ_METHODS:
                token = self._session_token(scope)
            if token is None:
                message = "send an API key as 'Authorization: Bearer <key>'"
            else:
                caller = await self.keyring.caller(
                    token.decode("latin-1"), resources.read_database, resources.database
                )
                if caller is None:
                    message = "invalid API key (unknown or revoked)"
        if caller is not None:
            state = scope.setdefault("state", {})
            state.update(caller=caller, principal=caller.principal, tenant=caller.tenant)
            bind_tenant(caller.tenant)
            bind_log_context(tenant=caller.tenant)
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
