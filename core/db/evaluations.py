"""Evaluation points of a job's training run: written by the worker (fenced by its
attempt, like metrics), read by the API and the stream."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.db.json_safe import finite_or_none
from core.db.pagination import Page, paginate
from core.db.tables import JobEvaluation
from core.db.types import utcnow


def add_evaluation(
    session: Session,
    job_id: str,
    *,
    attempt: int,
    step: int,
    epoch: float | None,
    seconds: float | None,
    metrics: dict[str, Any],
    verdict: dict[str, Any] | None,
    checkpoint: str | None = None,
) -> JobEvaluation:
    """Insert one point (not committed). NaN and infinities become null."""
    row = JobEvaluation(
        job_id=job_id,
        attempt=attempt,
        step=step,
        epoch=finite_or_none(epoch),
        created_at=utcnow(),
        seconds=finite_or_none(seconds),
        metrics=finite_or_none(metrics),
        verdict=finite_or_none(verdict),
        checkpoint=checkpoint,
    )
    session.add(row)
    session.flush()
    return row


def list_evaluations(
    session: Session, job_id: str, *, after: int | None = None, limit: int = 100
) -> Page[JobEvaluation]:
    """Oldest first; ``after`` is the last id the client has."""
    statement = select(JobEvaluation).where(JobEvaluation.job_id == job_id)
    return paginate(
        session, statement, JobEvaluation.id, after=after, limit=limit, newest_first=False
    )


def job_evaluations(session: Session, job_id: str) -> list[JobEvaluation]:
    """Every point of a job, in step order (reports and the worker's resume)."""
    statement = (
        select(JobEvaluation)
        .where(JobEvaluation.job_id == job_id)
        .order_by(JobEvaluation.step, JobEvaluation.id)
    )
    return list(session.scalars(statement))


def drop_evaluations_after(session: Session, job_id: str, step: int) -> None:
    """A run resumed at ``step`` will measure the later points again (not committed)."""
    session.execute(
        delete(JobEvaluation).where(JobEvaluation.job_id == job_id, JobEvaluation.step > step)
    )


def mark_checkpoints(session: Session, job_id: str, names_by_step: dict[int, str]) -> None:
    """Name the checkpoint each published point's weights went to (not committed)."""
    from sqlalchemy import update

    for step, name in names_by_step.items():
        session.execute(
            update(JobEvaluation)
            .where(JobEvaluation.job_id == job_id, JobEvaluation.step == step)
            .values(checkpoint=name)
        )
