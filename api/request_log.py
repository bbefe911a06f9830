"""One log line per request, and a request id that ties a request's lines together.

A caller's ``X-Request-ID`` is honoured when it is a plain token (1-128 characters of
``A-Za-z0-9._:-``, so it cannot forge log fields or headers), else the server makes
one; either way it is echoed in the response's ``X-Request-ID`` and bound to every log
line written while the request runs (``core.logs``). Pure ASGI, like the metrics
middleware: no per-request task or body buffering.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import ANONYMOUS
from core.logs import bound

HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

log = logging.getLogger("obliviate.request")


def request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER:
            if VALID_REQUEST_ID.fullmatch(value):
                return value.decode()
            break
    return uuid.uuid4().hex


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_request_id)
            finally:
                state = scope.get("state") or {}
                route = getattr(scope.get("route"), "path", None)
                log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "principal": state.get("principal", ANONYMOUS),
                        "tenant": state.get("tenant"),
                    },
                )
