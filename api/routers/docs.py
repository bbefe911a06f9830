"""/docs (Swagger UI) and /redoc with their files served by this process, so they
render without internet. The files come from the fastapi-offline package (Swagger UI
and ReDoc's standalone bundle); FastAPI's own pages would load them from a CDN."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.dashboard.templating import STATIC

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
#: The pages may load from this server only. Their HTML starts the UI with an inline
#: script, and ReDoc searches in a blob: worker; its sidebar's "by Redocly" image from a
#: CDN is refused here rather than fetched.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
DOCS_PREFIX = "/static/docs"
FAVICON = "/static/favicon.svg"

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - API reference",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=f"{DOCS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        # No online validator badge: it would call out to a validator service.
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs/oauth2-redirect", response_class=HTMLResponse)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    app = request.app
    page = get_redoc_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - API reference",
        redoc_js_url=f"{DOCS_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def mount_static(app: FastAPI) -> None:
    """The docs' files, and the dashboard's (its script, styles and uPlot)."""
    app.mount(DOCS_PREFIX, StaticFiles(directory=DOCS_ASSETS), name="docs-static")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
