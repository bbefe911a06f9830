"""Uploaded datasets: the row is written after the file is stored; shredding keeps the
row (hashes, counts) and destroys the key."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.ids import is_id
from core.db.pagination import Page, paginate
from core.db.references import existing_references
from core.db.tables import TERMINAL_STATUSES, Dataset, Job
from core.errors import NotFound
from core.spec import EVALUATION_DATASET_FIELDS
from core.tenancy import owner_tenant, scoped, visible

#: ids of the datasets every tenant shares (core.bootstrap's demo datasets)
SHARED_DATASET_PREFIX = "ds_demo_"


def create_dataset(
    session: Session,
    *,
    dataset_id: str,
    name: str,
    filename: str,
    format: str,
    kind: str,
    record_count: int,
    size_bytes: int,
    sha256: str,
    storage_key: str,
    columns: list[str],
    has_truth_ratio_fields: bool,
    wrapped_key: bytes | None = None,
) -> Dataset:
    dataset = Dataset(
        id=dataset_id,
        # The demo datasets are every tenant's (stable ids, installed at start).
        tenant_id=None if dataset_id.startswith(SHARED_DATASET_PREFIX) else owner_tenant(),
        name=name,
        filename=filename,
        format=format,
        kind=kind,
        record_count=record_count,
        size_bytes=size_bytes,
        sha256=sha256,
        storage_key=storage_key,
        columns=columns,
        has_truth_ratio_fields=has_truth_ratio_fields,
        wrapped_key=wrapped_key,
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id) if is_id(dataset_id, "ds") else None
    if dataset is None or not visible(dataset.tenant_id):
        raise NotFound(
            f"no dataset with id {dataset_id!r}", param="dataset_id", code="dataset_not_found"
        )
    return dataset


def existing_dataset_ids(session: Session, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` exist (shredded or not), in one query."""
    found = existing_references(session, dataset_ids=ids, model_names=())
    return found.datasets | found.shredded_datasets


def list_datasets(session: Session, *, after: str | None = None, limit: int = 20) -> Page[Dataset]:
    statement = scoped(select(Dataset), Dataset.tenant_id, shared_when_null=True)
    return paginate(session, statement, Dataset.id, after=after, limit=limit)


def datasets_of_job(forget_dataset_id: str, retain_dataset_id: str | None, spec: dict) -> set[str]:
    """Every dataset a job reads: its forget (or train) and retain sets, and the
    evaluation sets its spec names."""
    evaluation: dict[str, Any] = spec.get("evaluation") or {}
    named = [evaluation.get(field) for field in EVALUATION_DATASET_FIELDS]
    named += list(evaluation.get("utility") or [])
    return {forget_dataset_id, retain_dataset_id, *named} - {None}


def unfinished_jobs_using(session: Session, dataset_id: str) -> list[str]:
    """The jobs not yet ended (queued, running, paused ...) that read ``dataset_id``.
    Few rows: only unfinished jobs are read, and their specs checked here."""
    rows = session.execute(
        select(Job.id, Job.forget_dataset_id, Job.retain_dataset_id, Job.spec)
        .where(Job.status.not_in(TERMINAL_STATUSES))
        .order_by(Job.id)
    )
    return [row.id for row in rows if dataset_id in datasets_of_job(*row[1:])]


def mark_shredded(session: Session, dataset_id: str, at: datetime) -> bool:
    """Destroy the dataset's key and record when; False when it was shredded already
    (so exactly one caller writes the audit entry). Flushed, not committed."""
    result = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.shredded_at.is_(None))
        .values(wrapped_key=None, shredded_at=at)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1
