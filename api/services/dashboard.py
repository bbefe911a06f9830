"""What each dashboard page shows, gathered in one database call per page from the
same service functions the JSON API uses (so a page and ``/v1`` never disagree)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from api.schemas.audit import AuditEntryObject
from api.schemas.common import ListObject
from api.schemas.deletion_requests import DeletionRequestObject
from api.schemas.jobs import CheckpointObject, JobObject
from api.services import artifacts, audit, deletion_requests, jobs
from core.db.artifacts import get_report
from core.db.audit import submitter_of

PAGE_SIZE = 25


@dataclass
class JobPage:
    job: JobObject
    checkpoints: list[CheckpointObject]
    #: the report's summary (with ``verdict``) once written
    summary: dict[str, Any] | None
    submitted_by: str | None


@dataclass
class DeletionRequestPage:
    request: DeletionRequestObject
    #: job id -> the verdict of its report
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)


def job_list(
    session: Session, *, statuses: list[str], method: str | None, after: str | None
) -> ListObject[JobObject]:
    return jobs.list_jobs(
        session,
        statuses=statuses,
        method=method,
        metadata={},
        updated_after=None,
        after=after,
        limit=PAGE_SIZE,
    )


def job_page(session: Session, job_id: str) -> JobPage:
    job = JobObject.from_row(jobs.get_job(session, job_id))
    report = get_report(session, job_id)
    return JobPage(
        job=job,
        checkpoints=artifacts.list_checkpoints(session, job_id).data,
        summary=report.summary if report is not None else None,
        submitted_by=submitter_of(session, job_id),
    )


def deletion_request_list(
    session: Session, *, statuses: list[str], after: str | None
) -> ListObject[DeletionRequestObject]:
    return deletion_requests.list_deletion_requests(
        session, statuses=statuses, after=after, limit=PAGE_SIZE
    )


def deletion_request_page(session: Session, request_id: str) -> DeletionRequestPage:
    request = deletion_requests.get_deletion_request(session, request_id)
    page = DeletionRequestPage(request=request)
    for linked in request.jobs:
        if linked.evidence is None:
            continue
        report = get_report(session, linked.id)
        verdict = (report.summary or {}).get("verdict") if report is not None else None
        if verdict:
            page.verdicts[linked.id] = verdict
    return page


def audit_page(
    session: Session,
    *,
    object_id: str | None,
    action: str | None,
    principal: str | None,
    after: int | None,
) -> ListObject[AuditEntryObject]:
    return audit.list_audit_entries(
        session,
        object_id=object_id,
        action=action,
        principal=principal,
        after=after,
        limit=PAGE_SIZE * 2,
    )
