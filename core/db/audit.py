"""The audit log: who did what to which object, appended in the transaction of the
action it records (so an action and its entry commit or roll back together).

The table is append-only: triggers (migration 0002) make UPDATE and DELETE fail on
both databases. Entries hold ids, statuses and digests, never the text of a request
(a deletion request's subject is itself personal data, and this log keeps everything
forever).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.pagination import Page, paginate
from core.db.tables import AuditEntry

#: The principal of writes the worker makes (the API's are ``anonymous`` or
#: ``key:<digest>``, see ``api.auth``).
WORKER = "worker"
#: jobs the reaper ends (worker_lost, time_limit, a cancel nobody finished)
REAPER = "reaper"
AUDIT_ACTIONS = (
    "dataset.created",
    "deletion_request.created",
    "job.submitted",
    "job.cancel_requested",
    "job.pause_requested",
    "job.resumed",
    "job.finished",
    "certificate.issued",
)

_INSERT = AuditEntry.__table__.insert()


def add_audit_entry(
    session: Session,
    *,
    principal: str,
    action: str,
    object_type: str,
    object_id: str,
    data: dict[str, Any] | None = None,
) -> None:
    """Append one entry (not committed); ``at`` is the database's clock."""
    if action not in AUDIT_ACTIONS:
        raise ValueError(f"audit action must be one of {AUDIT_ACTIONS}, got {action!r}")
    session.connection().execute(
        _INSERT,
        {
            "principal": principal,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "data": data,
        },
    )


def list_audit_entries(
    session: Session,
    *,
    object_id: str | None = None,
    action: str | None = None,
    principal: str | None = None,
    after: int | None = None,
    limit: int = 100,
) -> Page[AuditEntry]:
    """Oldest first (the order things happened); ``after`` is the last id seen."""
    statement = select(AuditEntry)
    if object_id is not None:
        statement = statement.where(AuditEntry.object_id == object_id)
    if action is not None:
        statement = statement.where(AuditEntry.action == action)
    if principal is not None:
        statement = statement.where(AuditEntry.principal == principal)
    return paginate(session, statement, AuditEntry.id, after=after, limit=limit, newest_first=False)


def submitter_of(session: Session, job_id: str) -> str | None:
    """Who submitted the job: the principal of its ``job.submitted`` entry."""
    return session.scalar(
        select(AuditEntry.principal)
        .where(AuditEntry.object_id == job_id, AuditEntry.action == "job.submitted")
        .limit(1)
    )
