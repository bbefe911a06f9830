"""The dashboard's pages (HTML, not part of the OpenAPI document). Each parses, signs
the person in and calls one function of ``api.services.dashboard``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.dashboard.page_error import PageError
from api.dashboard.signin import (
    DashboardAuditor,
    DashboardPrincipal,
    safe_next,
    sign_in_redirect,
    sign_out_redirect,
)
from api.dashboard.templating import render
from api.deps import ReadDatabaseDep
from api.routers.audit import PRINCIPAL_PATTERN
from api.routers.params import After
from api.schemas.audit import AuditAction
from api.schemas.deletion_requests import DeletionRequestStatus
from api.schemas.jobs import JobStatus
from api.services import dashboard
from core.db.audit import AUDIT_ACTIONS
from core.db.deletion_requests import DELETION_REQUEST_STATUSES
from core.db.ids import ID_PATTERN
from core.db.tables import JOB_STATUSES
from core.errors import ObliviateError
from core.methods import LISTED_METHODS

router = APIRouter(include_in_schema=False)


async def _load(db, function, *args, **kwargs):
    try:
        return await db.run(function, *args, **kwargs)
    except ObliviateError as error:
        raise PageError(error) from None


async def show_page_error(request: Request, exc: PageError) -> HTMLResponse:
    return render(request, "error.html", status_code=exc.error.http_status, error=exc.error)


@router.get("/", response_class=HTMLResponse)
async def jobs_page(
    request: Request,
    db: ReadDatabaseDep,
    principal: DashboardPrincipal,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    method: str | None = None,
    after: After = None,
) -> HTMLResponse:
    method = method if method in LISTED_METHODS else None
    page = await _load(db, dashboard.job_list, statuses=status or [], method=method, after=after)
    return render(
        request,
        "jobs.html",
        page=page,
        statuses=JOB_STATUSES,
        methods=list(LISTED_METHODS),
        chosen_statuses=status or [],
        chosen_method=method,
        first_page=after is None,
        principal=principal,
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    job_id: str, request: Request, db: ReadDatabaseDep, principal: DashboardPrincipal
) -> HTMLResponse:
    page = await _load(db, dashboard.job_page, job_id)
    return render(request, "job.html", page=page, job=page.job, principal=principal)


@router.get("/jobs/{job_id}/outcome", response_class=HTMLResponse)
async def job_outcome(
    job_id: str, request: Request, db: ReadDatabaseDep, principal: DashboardPrincipal
) -> HTMLResponse:
    """The report and checkpoints part of a job's page, fetched again when it ends."""
    page = await _load(db, dashboard.job_page, job_id)
    return render(request, "_outcome.html", page=page, job=page.job)


@router.get("/deletion-requests", response_class=HTMLResponse)
async def deletion_requests_page(
    request: Request,
    db: ReadDatabaseDep,
    principal: DashboardPrincipal,
    status: Annotated[list[DeletionRequestStatus] | None, Query()] = None,
    after: After = None,
) -> HTMLResponse:
    page = await _load(db, dashboard.deletion_request_list, statuses=status or [], after=after)
    return render(
        request,
        "deletion_requests.html",
        page=page,
        statuses=DELETION_REQUEST_STATUSES,
        chosen_statuses=status or [],
        principal=principal,
    )


@router.get("/deletion-requests/{request_id}", response_class=HTMLResponse)
async def deletion_request_page(
    request_id: str, request: Request, db: ReadDatabaseDep, principal: DashboardPrincipal
) -> HTMLResponse:
    page = await _load(db, dashboard.deletion_request_page, request_id)
    return render(request, "deletion_request.html", page=page, principal=principal)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    db: ReadDatabaseDep,
    principal: DashboardAuditor,
    object_id: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
    action: AuditAction | None = None,
    who: Annotated[str | None, Query(pattern=PRINCIPAL_PATTERN)] = None,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
) -> HTMLResponse:
    page = await _load(
        db, dashboard.audit_page, object_id=object_id, action=action, principal=who, after=after
    )
    return render(
        request,
        "audit.html",
        page=page,
        actions=AUDIT_ACTIONS,
        filters={"object_id": object_id or "", "action": action or "", "who": who or ""},
        principal=principal,
    )


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, next: str = "/") -> Response:
    if await _open(request):
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "sign_in.html", next=safe_next(next), error=None)


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    form = await request.form()
    token = str(form.get("api_key") or "").strip()
    next_path = safe_next(str(form.get("next") or "/"))
    if await _open(request):
        return RedirectResponse(next_path, status_code=303)
    caller = None
    if token:
        resources = request.app.state.resources
        caller = await request.app.state.keyring.caller(
            token, resources.read_database, resources.database
        )
    if caller is None:
        error = "That API key is not valid." if token else "Enter an API key."
        return render(request, "sign_in.html", status_code=401, next=next_path, error=error)
    return sign_in_redirect(next_path, token, secure=request.url.scheme == "https")


async def _open(request: Request) -> bool:
    """No keys anywhere: nobody signs in."""
    return await request.app.state.keyring.is_open(request.app.state.resources.read_database)


@router.post("/sign-out")
async def sign_out() -> Response:
    return sign_out_redirect()
