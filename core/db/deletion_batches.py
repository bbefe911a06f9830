"""Batches of deletion requests and the links between jobs and the requests they serve.

Concurrency, the two places it matters:

- joining (:func:`join_open_batch`): a request joins the open batch of its key with a
  conditional UPDATE of that batch's row (``status = 'open' AND closes_at > now``).
  The UPDATE takes the row's lock, so a dispatcher's claim of the same row waits for
  the joining transaction and then reads its request among the members; if the batch
  was claimed first, the UPDATE matches nothing and the request opens a new batch.
- dispatching (:func:`claim_batch`): one conditional UPDATE ``open -> dispatched``;
  of two batchers racing, one matches the row and makes the job, the other matches
  nothing and rolls back. One job per batch, whatever runs the batcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.ids import new_id
from core.db.tables import DeletionBatch, DeletionRequest, JobDeletionRequest
from core.db.types import utcnow
from core.tenancy import owner_tenant, scoped

OPEN, DISPATCHED = "open", "dispatched"
#: the records check of a batch member before its job ended
PENDING = "pending"

_batches = DeletionBatch.__table__


def join_open_batch(
    session: Session,
    request: DeletionRequest,
    *,
    settings_key: str,
    job_settings: dict[str, Any],
    window_s: float,
    now: datetime | None = None,
) -> DeletionBatch:
    """Put ``request`` (flushed) in the open batch of its tenant, model and settings
    that is still inside its window, or in a new one that closes ``window_s`` from now.
    Flushed, not committed."""
    now = now or utcnow()
    candidates = session.scalars(
        select(DeletionBatch.id)
        .where(
            DeletionBatch.tenant_id == request.tenant_id,
            DeletionBatch.settings_key == settings_key,
            DeletionBatch.model == request.model,
            DeletionBatch.status == OPEN,
            DeletionBatch.closes_at > now,
        )
        .order_by(DeletionBatch.created_at)
    ).all()
    for batch_id in candidates:
        touched = session.execute(
            update(_batches)
            .where(
                _batches.c.id == batch_id,
                _batches.c.status == OPEN,
                _batches.c.closes_at > now,
            )
            .values(status=OPEN)
        ).rowcount
        if touched:
            request.batch_id = batch_id
            session.flush()
            return session.get(DeletionBatch, batch_id)
    batch = DeletionBatch(
        id=new_id("dbat"),
        tenant_id=request.tenant_id,
        model=request.model,
        settings_key=settings_key,
        job_settings=job_settings,
        status=OPEN,
        created_at=now,
        closes_at=now + timedelta(seconds=window_s),
    )
    session.add(batch)
    session.flush()
    request.batch_id = batch.id
    session.flush()
    return batch


def due_batch_ids(session: Session, *, now: datetime, flush: bool = False) -> list[str]:
    """Open batches whose window closed (every open one of the bound tenant with
    ``flush``), oldest first."""
    statement = select(DeletionBatch.id).where(DeletionBatch.status == OPEN)
    if not flush:
        statement = statement.where(DeletionBatch.closes_at <= now)
    statement = scoped(statement, DeletionBatch.tenant_id).order_by(DeletionBatch.created_at)
    return list(session.scalars(statement))


def batch_members(session: Session, batch_id: str) -> list[DeletionRequest]:
    """The requests of a batch, in the order they arrived."""
    return list(
        session.scalars(
            select(DeletionRequest)
            .where(DeletionRequest.batch_id == batch_id)
            .order_by(DeletionRequest.created_at, DeletionRequest.id)
        )
    )


def claim_batch(session: Session, batch_id: str, *, now: datetime | None = None) -> bool:
    """``open -> dispatched``, in the caller's transaction: True for the one caller
    that gets it."""
    return bool(
        session.execute(
            update(_batches)
            .where(_batches.c.id == batch_id, _batches.c.status == OPEN)
            .values(status=DISPATCHED, dispatched_at=now or utcnow())
        ).rowcount
    )


def link_job(
    session: Session,
    job_id: str,
    request_id: str,
    *,
    records: dict[str, Any] | None = None,
) -> None:
    """Record that ``job_id`` serves ``request_id``. ``records`` (a batch member: where
    its records sit in the union) marks the records check as pending."""
    session.add(
        JobDeletionRequest(
            job_id=job_id,
            deletion_request_id=request_id,
            tenant_id=owner_tenant(),
            records_verdict=PENDING if records is not None else None,
            records=records,
        )
    )


def pending_members(session: Session, job_id: str) -> list[JobDeletionRequest]:
    """The batch members whose records the job must check, in union order."""
    rows = session.scalars(
        select(JobDeletionRequest).where(
            JobDeletionRequest.job_id == job_id, JobDeletionRequest.records.is_not(None)
        )
    ).all()
    return sorted(rows, key=lambda row: row.records.get("offset", 0))


def record_member_evidence(
    session: Session,
    job_id: str,
    outcomes: Sequence[dict[str, Any]],
    cost: dict[str, Any] | None,
) -> None:
    """Store each member's records check (flushed, not committed) and the batch's cost.
    A member without an outcome (its records could not be evaluated) is
    ``not_verifiable``: never fulfilled by default."""
    by_request = {outcome["request_id"]: outcome for outcome in outcomes}
    for row in pending_members(session, job_id):
        outcome = by_request.get(row.deletion_request_id)
        if outcome is None:
            outcome = {
                "request_id": row.deletion_request_id,
                "status": "not_verifiable",
                "reason": "the job did not evaluate this request's records",
            }
        row.records_verdict = outcome["status"]
        row.records_evidence = dict(outcome)
    if cost is not None:
        session.execute(update(_batches).where(_batches.c.job_id == job_id).values(cost=cost))
    session.flush()


def batches_by_id(session: Session, batch_ids: Iterable[str]) -> dict[str, DeletionBatch]:
    ids = sorted({batch_id for batch_id in batch_ids if batch_id})
    if not ids:
        return {}
    rows = session.scalars(select(DeletionBatch).where(DeletionBatch.id.in_(ids)))
    return {row.id: row for row in rows}


def member_ids(session: Session, batch_ids: Iterable[str]) -> dict[str, list[str]]:
    """Each batch's request ids, in the order they arrived."""
    ids = sorted(set(batch_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(DeletionRequest.batch_id, DeletionRequest.id)
        .where(DeletionRequest.batch_id.in_(ids))
        .order_by(DeletionRequest.created_at, DeletionRequest.id)
    )
    found: dict[str, list[str]] = {}
    for batch_id, request_id in rows:
        found.setdefault(batch_id, []).append(request_id)
    return found


def batch_of_job(session: Session, job_id: str) -> DeletionBatch | None:
    return session.scalar(select(DeletionBatch).where(DeletionBatch.job_id == job_id))
