"""Every error response is ``{"error": {"code", "message", "param"}}``: our own errors,
request validation, unknown routes, and (never on purpose) unexpected failures."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.errors import ObliviateError

log = logging.getLogger(__name__)

# The same codes core.spec.invalid_request_from gives for the job body.
CODE_BY_PYDANTIC_TYPE = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "finite_number": "non_finite_value",
}
CODE_BY_HTTP_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
}
# Where FastAPI says a value came from; the param names the field, not the location.
LOCATIONS = {"body", "query", "path", "header", "cookie"}


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "param": param}},
        status_code=status,
        headers=headers,
    )


async def handle_obliviate_error(_request: Request, exc: ObliviateError) -> JSONResponse:
    if exc.http_status >= 500:
        log.error("request failed: %s", exc)
    return error_response(exc.http_status, exc.code, exc.message, exc.param)


async def handle_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {"type": "invalid", "loc": ()}
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_json", "the body is not valid JSON")
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] in LOCATIONS:
        location = location[1:]
    param = ".".join(location) or None
    code = CODE_BY_PYDANTIC_TYPE.get(first.get("type", ""), "invalid_value")
    message = "unknown field" if code == "unknown_field" else first.get("msg", "invalid value")
    return error_response(422, code, f"{param}: {message}" if param else message, param)


async def handle_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    code = CODE_BY_HTTP_STATUS.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = "no such endpoint; see /docs"
    if exc.status_code == 405:
        # Starlette answers with the methods of the first route whose path matched; a
        # path served by several routes (GET and POST /v1/jobs) allows all of theirs.
        allowed = allowed_methods(request)
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        message = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
    return error_response(exc.status_code, code, message, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document lists for this request's path (HEAD with GET:
    Starlette answers HEAD wherever GET is served). The document is the contract, and
    it is where FastAPI versions agree: their route objects differ."""
    templates = getattr(request.app.state, "allow_templates", None)
    if templates is None:
        templates = request.app.state.allow_templates = _path_templates(request.app.openapi())
    methods: set[str] = set()
    for pattern, template_methods in templates:
        if pattern.fullmatch(request.url.path):
            methods |= template_methods
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _path_templates(document: dict) -> list[tuple[re.Pattern, set[str]]]:
    """Each documented path as a regex: ``{param}`` is one segment, except a trailing
    ``{path}`` (a ``{path:path}`` route), which spans several."""
    templates = []
    for template, operations in document.get("paths", {}).items():
        regex = re.escape(template)
        regex = re.sub(r"\\\{path\\\}$", ".+", regex)
        regex = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", regex)
        templates.append((re.compile(regex), {method.upper() for method in operations}))
    return templates


async def handle_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ObliviateError, handle_obliviate_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_exception)
    app.add_exception_handler(Exception, handle_unexpected)
