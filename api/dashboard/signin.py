"""Signing a person in to the dashboard with an API key.

The key is checked like a bearer token, then kept in an HttpOnly, SameSite=Strict
cookie, which the API accepts for reads only (``api.auth``). With no keys configured
(the embedded default) nobody needs to sign in.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from api.auth import ANONYMOUS, SESSION_COOKIE, authenticate, session_token

#: how long a sign-in lasts in the browser
SESSION_SECONDS = 12 * 3600


class SignInRequired(Exception):
    def __init__(self, next_path: str):
        self.next_path = next_path


async def dashboard_principal(request: Request) -> str:
    """Who is looking: ``anonymous`` when auth is off; else the signed-in key's
    principal, or a redirect to the sign-in page."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return ANONYMOUS
    token = session_token(request.headers.get("cookie"))
    principal = authenticate(token, keys) if token else None
    if principal is None:
        raise SignInRequired(request.url.path)
    return principal


DashboardPrincipal = Annotated[str, Depends(dashboard_principal)]


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
