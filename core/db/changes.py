"""What changed, read from the tables the service already writes: the rows a live
stream follows (events, metrics, and any other append-only table with an integer id and
a ``job_id``) and the jobs whose row moved (``updated_at``).

No second record of changes exists: a stream's position is the id of the last row it
delivered, so a client that reconnects resumes from the database.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from core.db.jobs import _JOB_VIEW_FROM, JOB_VIEW_COLUMNS, JobRow
from core.db.tables import Job

_jobs = Job.__table__


def max_id(session: Session, table: Any) -> int:
    """The highest id in ``table`` (0 when empty)."""
    return session.scalar(select(func.coalesce(func.max(table.id), 0))) or 0


def rows_after(
    session: Session,
    table: Any,
    after: int,
    *,
    limit: int,
    through: int | None = None,
    job_id: str | None = None,
) -> list[Any]:
    """Rows of ``table`` with ``after < id <= through``, in id order, at most ``limit``;
    only ``job_id``'s when given."""
    statement = select(table).where(table.id > after)
    if through is not None:
        statement = statement.where(table.id <= through)
    if job_id is not None:
        statement = statement.where(table.job_id == job_id)
    return list(session.scalars(statement.order_by(table.id).limit(limit)))


def rows_with_ids(session: Session, table: Any, ids: Collection[int]) -> list[Any]:
    if not ids:
        return []
    return list(session.scalars(select(table).where(table.id.in_(list(ids))).order_by(table.id)))


def changed_jobs(
    session: Session,
    *,
    updated_after: datetime | None,
    job_ids: Sequence[str] = (),
) -> list[JobRow]:
    """Jobs (as ``JOB_VIEW_COLUMNS`` rows) updated after ``updated_after``, plus the jobs
    named in ``job_ids`` (those that just wrote a row: their writer's clock may lag)."""
    conditions = []
    if updated_after is not None:
        conditions.append(_jobs.c.updated_at > updated_after)
    if job_ids:
        conditions.append(_jobs.c.id.in_(list(job_ids)))
    if not conditions:
        return []
    statement = select(*JOB_VIEW_COLUMNS).select_from(_JOB_VIEW_FROM).where(or_(*conditions))
    return list(session.connection().execute(statement).all())


def job_tenants(session: Session, job_ids: Collection[str]) -> dict[str, str]:
    """The tenant of each of ``job_ids``, in one query."""
    if not job_ids:
        return {}
    statement = select(_jobs.c.id, _jobs.c.tenant_id).where(_jobs.c.id.in_(sorted(job_ids)))
    return dict(session.execute(statement).all())
