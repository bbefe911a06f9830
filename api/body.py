"""JSON request bodies parsed strictly: a body not sent as ``application/json`` is a
415, malformed JSON a 400, and NaN or Infinity (which Python's json module accepts) a
422 naming the field, before any validation.

The media type matters beyond tidiness: ``text/plain``, form-encoded and multipart
bodies are what a browser may POST to another origin without asking (no CORS
preflight), so a JSON route that took them would let any web page submit jobs with a
logged-in user's ambient credentials."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import Depends, Request

from core.data.formats import UNSTORABLE_TEXT, storable_text
from core.errors import InvalidRequest, ObliviateError

MAX_JSON_BODY_BYTES = 1 << 20


class InvalidJSON(ObliviateError):
    code = "invalid_json"
    http_status = 400


class RequestTooLarge(ObliviateError):
    code = "request_too_large"
    http_status = 413


class UnsupportedMediaType(ObliviateError):
    code = "unsupported_media_type"
    http_status = 415


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters aside."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def read_json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            f"send the body as JSON with Content-Type: application/json, not "
            f"{content_type or 'no Content-Type'}",
            param="Content-Type",
        )
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BODY_BYTES:
            raise RequestTooLarge(f"a JSON body may hold at most {MAX_JSON_BODY_BYTES} bytes")
    return parse_json_object(bytes(raw))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidJSON("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, oversized integers
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"the body must be a JSON object, not {type(value).__name__}", code="invalid_body"
        )
    problem = first_unstorable(value)
    if problem is not None:
        path, code, reason = problem
        raise InvalidRequest(f"{path}: {reason}" if path else reason, param=path, code=code)
    return value


def first_unstorable(value: Any) -> tuple[str | None, str, str] | None:
    """``(dotted path, code, reason)`` of the first value no database may store: NaN or
    an infinity, or text with a NUL or an unpaired surrogate (Postgres rejects both).
    Iterative, since bodies may nest deeper than Python's recursion limit allows."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return (
                ".".join(path) or None,
                "non_finite_value",
                "NaN and infinite numbers are not allowed",
            )
        if isinstance(item, str) and not storable_text(item):
            return ".".join(path) or None, "invalid_value", UNSTORABLE_TEXT
        if isinstance(item, dict):
            for key in item:
                if not storable_text(key):
                    return (
                        ".".join((*path, key.encode("unicode_escape").decode())),
                        "invalid_value",
                        UNSTORABLE_TEXT,
                    )
            stack.extend((child, (*path, key)) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, (*path, str(i))) for i, child in reversed(list(enumerate(item))))
    return None


JsonObject = Annotated[dict[str, Any], Depends(read_json_object)]
