from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.body import JsonObject
from api.deps import (
    CeleryDep,
    DatabaseDep,
    PrincipalDep,
    ReadDatabaseDep,
    SettingsDep,
    StoreDep,
)
from api.openapi import FILE_RESPONSE, HTML_OR_PNG_RESPONSE, json_body, replay_response
from api.routers.params import After, Cursor, IdempotencyKey, Limit
from api.schemas.common import ListObject
from api.schemas.jobs import (
    CheckpointList,
    EvaluationObject,
    EventObject,
    JobObject,
    JobStatus,
    MetricList,
)
from api.services import artifacts, jobs
from core.db.tables import JobEvent, JobMetric
from core.errors import InvalidRequest, NotFound
from core.methods import LISTED_METHODS, get_method
from core.methods.guard_spec import GUARD_METHOD
from core.spec import JobSpec, metadata_problem

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

METADATA_PREFIX = "metadata."
EventCursor = Cursor(JobEvent.id, "Last event id seen (`last_id`).")
StepCursor = Cursor(JobMetric.step, "Last step seen (`last_step`); -1 for all.", ge=-1)


@router.post(
    "",
    status_code=201,
    response_model=JobObject,
    openapi_extra=json_body(JobSpec),
    responses=replay_response(JobObject, "job"),
)
async def create_job(
    body: JsonObject,
    db: DatabaseDep,
    settings: SettingsDep,
    celery: CeleryDep,
    principal: PrincipalDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobObject:
    """Submit a job (body: the job spec). 201 when created; 200 with the original job
    when an ``Idempotency-Key`` is repeated with the same body."""
    job, created = await db.run(
        jobs.submit_job,
        settings,
        celery,
        body,
        principal=principal,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("", response_model=ListObject[JobObject])
async def list_jobs(
    request: Request,
    db: ReadDatabaseDep,
    status: Annotated[list[JobStatus] | None, Query(description="Repeatable.")] = None,
    method: Annotated[
        str | None,
        Query(json_schema_extra={"enum": list(LISTED_METHODS)}, description="A method name."),
    ] = None,
    updated_after: Annotated[
        str | None,
        Query(
            json_schema_extra={"format": "date-time"},
            description="RFC 3339 date-time with an offset or Z, e.g. 2026-01-31T12:00:00Z.",
        ),
    ] = None,
    after: After = None,
    limit: Limit = 20,
) -> ListObject[JobObject]:
    """Newest first. Filters: ``status`` (repeatable), ``method``,
    ``metadata.<key>=<value>``, ``updated_after`` (ISO 8601)."""
    return await db.run(
        jobs.list_jobs,
        statuses=status or [],
        method=_known_method(method),
        metadata=_metadata_filters(request),
        updated_after=_rfc3339(updated_after, "updated_after"),
        after=after,
        limit=limit,
    )


@router.get(
    "/{job_id}",
    response_model=JobObject,
    responses={304: {"description": "Not modified since the ETag sent as If-None-Match."}},
)
async def get_job(
    job_id: str,
    db: ReadDatabaseDep,
    if_none_match: Annotated[
        str | None, Header(description="An ETag this route answered before.")
    ] = None,
) -> Response:
    """With a weak ETag: send it back as If-None-Match to get 304 while nothing changed."""
    row = await db.run(jobs.get_job, job_id)
    headers = {"ETag": jobs.job_etag(row), "Cache-Control": "no-cache"}
    if jobs.etag_matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    # Serialized here, once: dashboards poll this route hardest, and returning the model
    # would have FastAPI validate it again before dumping it.
    body = JobObject.from_row(row).model_dump_json()
    return Response(body, media_type="application/json", headers=headers)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobObject)
async def cancel_job(job_id: str, db: DatabaseDep, principal: PrincipalDep) -> JobObject:
    """A queued job is cancelled at once; a running one becomes ``cancelling`` until its
    worker stops. 409 ``job_not_cancellable`` once finished."""
    return await db.run(jobs.cancel_job, job_id, principal=principal)


@router.post("/{job_id}/pause", status_code=202, response_model=JobObject)
async def pause_job(job_id: str, db: DatabaseDep, principal: PrincipalDep) -> JobObject:
    """A running job becomes ``pausing`` and then ``paused`` once its worker saved the
    full training state at its next step; a queued job is ``paused`` at once. 409
    ``job_not_pausable`` for jobs in other states."""
    return await db.run(jobs.pause_job, job_id, principal=principal)


@router.post("/{job_id}/resume", status_code=202, response_model=JobObject)
async def resume_job(
    job_id: str, db: DatabaseDep, celery: CeleryDep, principal: PrincipalDep
) -> JobObject:
    """A paused job is queued again and continues from its saved state (the same weights
    as if it had never stopped). 409 ``job_not_paused`` otherwise."""
    return await db.run(jobs.resume_job, celery, job_id, principal=principal)


@router.get("/{job_id}/evaluations", response_model=ListObject[EvaluationObject])
async def list_evaluations(
    job_id: str,
    db: ReadDatabaseDep,
    after: Annotated[
        int | None, Query(ge=0, le=2**62, description="Last evaluation id seen.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListObject[EvaluationObject]:
    """The evaluation points of the job's training run, oldest first: the probe's
    figures (forget vs holdout likelihood, knowledge p-value, utility) and the verdict
    at each; ``checkpoint`` names the checkpoint that kept a point's weights."""
    return await db.run(jobs.list_evaluations, job_id, after=after, limit=limit)


@router.get("/{job_id}/events", response_model=ListObject[EventObject])
async def list_events(
    job_id: str,
    db: ReadDatabaseDep,
    after: EventCursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListObject[EventObject]:
    """Oldest first."""
    return await db.run(jobs.list_events, job_id, after=after, limit=limit)


@router.get("/{job_id}/metrics", response_model=MetricList)
async def list_metrics(
    job_id: str,
    db: ReadDatabaseDep,
    after_step: StepCursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MetricList:
    """In step order."""
    return await db.run(jobs.list_metrics, job_id, after_step=after_step, limit=limit)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(job_id: str, db: ReadDatabaseDep) -> CheckpointList:
    return await db.run(artifacts.list_checkpoints, job_id)


@router.get(
    "/{job_id}/checkpoints/{checkpoint_id}/files/{path:path}",
    response_class=StreamingResponse,
    responses=FILE_RESPONSE,
)
async def download_checkpoint_file(
    job_id: str, checkpoint_id: str, path: str, db: ReadDatabaseDep, store: StoreDep
) -> StreamingResponse:
    """``checkpoint_id``: the id or the name (``final``)."""
    stored = await db.run(artifacts.checkpoint_file, job_id, checkpoint_id, path)
    chunks = await run_in_threadpool(artifacts.open_stored, store, stored)
    headers = {"Content-Disposition": f'attachment; filename="{stored.filename}"'}
    if stored.size is not None:
        headers["Content-Length"] = str(stored.size)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.get("/{job_id}/report", responses={200: {"content": {"application/json": {}}}})
async def get_report(job_id: str, db: ReadDatabaseDep, store: StoreDep) -> Response:
    """The evaluation report (report.json); 409 ``report_not_ready`` until written."""
    stored = await db.run(artifacts.report_file, job_id, artifacts.REPORT_JSON)
    content = await run_in_threadpool(artifacts.read_stored, store, stored)
    return Response(content, media_type="application/json")


@router.get("/{job_id}/report.html", status_code=307, response_class=RedirectResponse)
async def get_report_html(job_id: str) -> RedirectResponse:
    """The human report. It lives next to its plots, which it references by relative
    file name (so a downloaded report folder works offline too)."""
    return RedirectResponse(f"report/files/{artifacts.REPORT_HTML}", status_code=307)


@router.get(
    "/{job_id}/report/files/{name}",
    response_class=StreamingResponse,
    responses=HTML_OR_PNG_RESPONSE,
)
async def get_report_file(job_id: str, name: str, db: ReadDatabaseDep, store: StoreDep):
    """report.html, or a plot (PNG) stored next to it."""
    if name == artifacts.REPORT_HTML:
        stored = await db.run(artifacts.report_file, job_id, name)
        content = await run_in_threadpool(artifacts.read_stored, store, stored)
        return Response(content, media_type="text/html; charset=utf-8")
    if not artifacts.PLOT_NAME.match(name):
        raise NotFound(f"no report file {name!r}", param="name", code="file_not_found")
    stored = await db.run(artifacts.report_file, job_id, name)
    chunks = await run_in_threadpool(artifacts.open_stored, store, stored)
    return StreamingResponse(chunks, media_type="image/png")


def _known_method(method: str | None) -> str | None:
    if method is not None and method != GUARD_METHOD:
        get_method(method)  # 422 unknown_method, listing the choices
    return method


def _metadata_filters(request: Request) -> dict[str, str]:
    filters = {}
    for name, value in request.query_params.multi_items():
        if not name.startswith(METADATA_PREFIX):
            continue
        key = name[len(METADATA_PREFIX) :]
        problem = metadata_problem(key, value)
        if problem is None and "\x00" in value:
            problem = f"value of {key!r}: must not contain NUL"
        if problem:
            raise InvalidRequest(f"{name}: metadata {problem}", param=name, code="invalid_value")
        filters[key] = value
    return filters


RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def _rfc3339(value: str | None, param: str) -> datetime | None:
    """An RFC 3339 date-time (what the document's ``format: date-time`` means), in UTC.
    A leap second (:60) counts as :59; a time whose UTC falls outside the years 1-9999
    (0001-01-01T00:00:00+01:00) is clamped, not refused: every job was updated after
    the one, none after the other."""
    if value is None:
        return None
    match = RFC3339.match(value)
    if match is None:
        raise InvalidRequest(
            f"{param}: not an RFC 3339 date-time (e.g. 2026-01-31T12:00:00Z)",
            param=param,
            code="invalid_value",
        )
    date, minutes, seconds, fraction, offset = match.groups()
    seconds = min(int(seconds), 59)
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{date}T{minutes}:{seconds:02d}{fraction or ''}{offset}")
    except ValueError:
        raise InvalidRequest(
            f"{param}: not a valid date-time", param=param, code="invalid_value"
        ) from None
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        earliest = parsed.year == 1
        return (datetime.min if earliest else datetime.max).replace(tzinfo=timezone.utc)
