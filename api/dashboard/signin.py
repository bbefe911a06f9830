"""Signing a person in to the dashboard with an API key.

The key is checked like a bearer token, then kept in an HttpOnly, SameSite=Strict
cookie, which the API accepts for reads only (``api.auth``). With no keys anywhere
(the embedded default) nobody needs to sign in. A signed-in page shows only the key's
tenant's objects, like the API.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from api.auth import SESSION_COOKIE, session_token
from api.authz import Caller
from api.dashboard.page_error import PageError
from api.keyring import OPEN_CALLER
from core.errors import Forbidden
from core.tenancy import ROLE_PERMISSIONS, bind_tenant, roles_with

#: how long a sign-in lasts in the browser
SESSION_SECONDS = 12 * 3600


class SignInRequired(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path


async def dashboard_caller(request: Request) -> Caller:
    """Who is looking: OPEN_CALLER when the service has no keys; else the signed-in
    key's caller (its tenant bound for the page), or a redirect to the sign-in page."""
    keyring = request.app.state.keyring
    resources = request.app.state.resources
    if await keyring.is_open(resources.read_database):
        caller = OPEN_CALLER
    else:
        token = session_token(request.headers.get("cookie"))
        caller = None
        if token:
            caller = await keyring.caller(token, resources.read_database, resources.database)
        if caller is None:
            raise SignInRequired(request.url.path)
    request.state.caller = caller
    bind_tenant(caller.tenant)
    return caller


async def dashboard_principal(request: Request) -> str:
    caller = await dashboard_caller(request)
    return caller.principal


async def dashboard_auditor(request: Request) -> str:
    """The audit page's viewer: a role with the audit permission."""
    caller = await dashboard_caller(request)
    if "audit" not in ROLE_PERMISSIONS.get(caller.role, ()):
        roles = " or ".join(roles_with("audit"))
        error = Forbidden(f"the audit log needs the {roles} role; yours is {caller.role}")
        raise PageError(error)
    return caller.principal


DashboardPrincipal = Annotated[str, Depends(dashboard_principal)]
DashboardAuditor = Annotated[str, Depends(dashboard_auditor)]


def safe_next(path: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def sign_in_redirect(next_path: str, token: str, *, secure: bool) -> RedirectResponse:
    response = RedirectResponse(safe_next(next_path), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        quote(token, safe=""),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )
    return response


def sign_out_redirect() -> RedirectResponse:
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def redirect_to_sign_in(request: Request, exc: SignInRequired) -> RedirectResponse:
    return RedirectResponse(f"/sign-in?next={quote(exc.next_path)}", status_code=303)
