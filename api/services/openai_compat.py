"""The OpenAI-compatible endpoint: the model listing comes from the registry; a
generation request is validated, its model looked up, and the request forwarded to the
inference server (``OBLIVIATE_INFERENCE_URL``), whose answer (a JSON body, or a stream
of Server-Sent Events) is passed through as it arrives."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from api.database import Database
from core.db import model_registry as repo
from core.errors import NotFound
from core.inference.protocol import OpenAIError, model_list, model_object, parse_request
from core.settings import Settings

#: Headers of the inference server's answer worth passing on.
PASSED_HEADERS = ("cache-control",)


def list_models(session: Session) -> dict:
    return model_list(repo.all_models(session), repo.guard_variants(session))


def get_model(session: Session, name: str) -> dict:
    """The model ``name`` names: a registered model, or ``<base>+<guard>...`` whose
    every part is registered (the serving process checks that the guards fit)."""
    rows = []
    for part in name.split("+"):
        try:
            rows.append(repo.get_model_by_name(session, part))
        except NotFound:
            raise OpenAIError(
                404, f"the model {part!r} does not exist", code="model_not_found", param="model"
            ) from None
    if len(rows) == 1:
        return model_object(rows[0])
    return model_object(rows[-1], name=name, owned_by="guard")


class InferenceProxy:
    """One connection pool to the inference server per API process."""

    def __init__(self, settings: Settings):
        headers = {}
        if settings.inference_api_key:
            headers["Authorization"] = f"Bearer {settings.inference_api_key}"
        self.base_url = settings.inference_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url + "/v1/",
            headers=headers,
            timeout=httpx.Timeout(settings.inference_timeout_s, connect=5.0),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def forward(self, endpoint: str, body: dict[str, Any]) -> Response:
        request = self.client.build_request("POST", endpoint, json=body)
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise OpenAIError(
                503,
                f"the inference server at {self.base_url} is not reachable "
                f"({type(exc).__name__}); is it running? (OBLIVIATE_INFERENCE_URL)",
                code="inference_unavailable",
            ) from None
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_HEADERS}
        media_type = upstream.headers.get("content-type", "")
        if upstream.status_code == 200 and media_type.startswith("text/event-stream"):
            headers["X-Accel-Buffering"] = "no"  # proxies: pass each event on at once
            return StreamingResponse(
                upstream.aiter_raw(),
                media_type="text/event-stream",
                headers=headers,
                background=BackgroundTask(upstream.aclose),
            )
        try:
            content = await upstream.aread()
        except httpx.TransportError:
            raise OpenAIError(
                502, "the inference server dropped the connection", code="inference_error"
            ) from None
        finally:
            await upstream.aclose()
        if not media_type.startswith("application/json"):
            raise OpenAIError(
                502,
                f"the inference server answered {upstream.status_code} without a JSON body",
                code="inference_error",
            )
        return Response(content, status_code=upstream.status_code, media_type="application/json")


async def generate(
    endpoint: str, body: dict[str, Any], db: Database, proxy: InferenceProxy
) -> Response:
    """Check the request and that its model (and each guard of ``base+guard``) is
    registered here (404 ``model_not_found`` otherwise), then forward it unchanged: fields we do not
    interpret may mean something to the server behind (vLLM)."""
    request = parse_request(endpoint, body)
    await db.run(get_model, request.model)
    return await proxy.forward(endpoint, body)
