"""The dashboard's Jinja2 environment: its own templates first, then the report's (so a
page can include the report's verdict box), with a few display filters."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from api.keyring import OPEN_CALLER
from core.evaluation.report_html import environment

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
TERMINAL = ("succeeded", "failed", "cancelled")
#: Dashboard pages load only from this server and run no inline script.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _size(count: int | None) -> str:
    if count is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _words(value: str) -> str:
    return value.replace("_", " ")


env = environment(TEMPLATES)
env.filters.update(when=_when, size=_size, words=_words)
env.globals.update(TERMINAL=TERMINAL)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(
        request=request,
        path=request.url.path,
        # Signing in is on unless this page's caller is the open service's.
        auth_on=getattr(request.state, "caller", None) is not OPEN_CALLER,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers={"Content-Security-Policy": CSP})
