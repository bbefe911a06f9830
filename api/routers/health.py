from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import SettingsDep
from api.services import health
from core.db.jobs import count_jobs_by_status

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"content": {"application/json": {}}},
        503: {"description": "A component is down.", "content": {"application/json": {}}},
    },
)
def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Database, broker and storage reachable; 503 naming the failing component."""
    resources = request.app.state.resources
    result = health.readiness(resources.engine, resources.celery, resources.store, settings)
    return JSONResponse(result, status_code=200 if result["status"] == "ok" else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    resources = request.app.state.resources

    def count_jobs() -> dict[str, int]:
        with resources.read_database.session_factory() as session:
            return count_jobs_by_status(session)

    body = request.app.state.metrics.exposition(count_jobs)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
