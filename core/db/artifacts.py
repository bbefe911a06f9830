"""Checkpoints and reports: rows that point at files in the object store.

The worker inserts a checkpoint row only after every file and then the manifest are
stored, so a row the API can see always has all its files.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.ids import is_id, new_id
from core.db.json_safe import finite_or_none
from core.db.tables import Checkpoint, Report
from core.db.types import utcnow
from core.errors import NotFound
from core.models.locations import NAME_PATTERN


def add_checkpoint(
    session: Session,
    job_id: str,
    name: str,
    step: int,
    storage_prefix: str,
    files: list[dict[str, Any]],
    manifest_sha256: str,
    metrics: dict[str, Any] | None = None,
) -> Checkpoint:
    """``files``: ``[{"path", "size", "sha256"}]`` relative to ``storage_prefix``.
    Flushed, not committed."""
    checkpoint = Checkpoint(
        id=new_id("ckpt"),
        job_id=job_id,
        name=name,
        step=step,
        storage_prefix=storage_prefix.rstrip("/"),
        files=[dict(item) for item in files],
        manifest_sha256=manifest_sha256,
        metrics=finite_or_none(metrics) if metrics is not None else None,
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    statement = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.id)
    return list(session.scalars(statement))


def get_checkpoint(session: Session, job_id: str, checkpoint: str) -> Checkpoint:
    """By id (``ckpt_...``) or by name (``final``)."""
    column = Checkpoint.id if is_id(checkpoint, "ckpt") else Checkpoint.name
    row = None
    if NAME_PATTERN.match(checkpoint) and is_id(job_id, "job"):
        statement = select(Checkpoint).where(Checkpoint.job_id == job_id, column == checkpoint)
        row = session.scalar(statement)
    if row is None:
        raise NotFound(
            f"job {job_id} has no checkpoint {checkpoint!r}",
            param="checkpoint_id",
            code="checkpoint_not_found",
        )
    return row


def save_report(
    session: Session,
    job_id: str,
    schema_version: str | int,
    summary: dict[str, Any],
    json_key: str,
    html_key: str | None,
) -> Report:
    """Insert or replace the job's report row (``schema_version`` as the report states
    it, e.g. ``"1.0"``). Flushed, not committed."""
    report = session.get(Report, job_id)
    if report is None:
        report = Report(job_id=job_id)
        session.add(report)
    report.schema_version = str(schema_version)
    report.summary = finite_or_none(summary)
    report.json_key = json_key
    report.html_key = html_key
    report.created_at = utcnow()
    session.flush()
    return report


def get_report(session: Session, job_id: str) -> Report | None:
    return session.get(Report, job_id)
