"""Uploaded datasets: the row is written after the file is stored."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.ids import is_id
from core.db.pagination import Page, paginate
from core.db.references import existing_references
from core.db.tables import Dataset
from core.errors import NotFound


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
) -> Dataset:
    dataset = Dataset(
        id=dataset_id,
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
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id) if is_id(dataset_id, "ds") else None
    if dataset is None:
        raise NotFound(
            f"no dataset with id {dataset_id!r}", param="dataset_id", code="dataset_not_found"
        )
    return dataset


def existing_dataset_ids(session: Session, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` exist, in one query."""
    return existing_references(session, dataset_ids=ids, model_names=()).datasets


def list_datasets(session: Session, *, after: str | None = None, limit: int = 20) -> Page[Dataset]:
    return paginate(session, select(Dataset), Dataset.id, after=after, limit=limit)
