"""Idempotency keys for job submission and deletion requests: a retried POST returns
what the first attempt created instead of creating it twice."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.tables import IdempotencyKey


def find_idempotency_key(session: Session, principal: str, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.principal == principal, IdempotencyKey.key == key
        )
    )


def add_idempotency_key(
    session: Session,
    principal: str,
    key: str,
    request_sha256: str,
    job_id: str | None = None,
    *,
    deletion_request_id: str | None = None,
) -> None:
    """Records what the key made: ``job_id`` or ``deletion_request_id``. Flushes, so a
    concurrent duplicate fails here (IntegrityError on the primary key) inside the
    caller's transaction, before anything is committed."""
    session.add(
        IdempotencyKey(
            principal=principal,
            key=key,
            request_sha256=request_sha256,
            job_id=job_id,
            deletion_request_id=deletion_request_id,
        )
    )
    session.flush()
