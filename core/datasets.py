"""Storing a dataset file: validate every record and put the file in the object store
(no database: parsing a large file takes seconds that must not hold a connection),
then insert the row, so a row always has its file. Used by uploads and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from core.data.limits import DataLimits
from core.data.records import RecordSummary, scan_records
from core.db import datasets as repo
from core.db.ids import new_id
from core.db.tables import Dataset
from core.storage import ObjectStore


@dataclass
class StoredDataset:
    """A file that passed validation and is in the store, not yet recorded."""

    dataset_id: str
    name: str
    filename: str
    storage_key: str
    summary: RecordSummary


def store_dataset_file(
    store: ObjectStore,
    path: Path,
    *,
    filename: str,
    name: str,
    dataset_id: str | None = None,
    limits: DataLimits | None = None,
) -> StoredDataset:
    """``filename`` must already be a safe key segment. Every record is validated in one
    streaming pass (none is kept), within ``limits`` (the settings' by default)."""
    summary = scan_records(path, name=filename, limits=limits)
    dataset_id = dataset_id or new_id("ds")
    storage_key = f"datasets/{dataset_id}/{filename}"
    store.put_file(storage_key, path)
    return StoredDataset(dataset_id, name, filename, storage_key, summary)


def record_dataset(session: Session, stored: StoredDataset) -> Dataset:
    """Insert the row of a stored file. Flushed, not committed."""
    summary = stored.summary
    return repo.create_dataset(
        session,
        dataset_id=stored.dataset_id,
        name=stored.name,
        filename=stored.filename,
        format=summary.format,
        kind=summary.kind,
        record_count=summary.count,
        size_bytes=summary.size_bytes,
        sha256=summary.sha256,
        storage_key=stored.storage_key,
        columns=summary.columns,
        has_truth_ratio_fields=summary.has_truth_ratio_fields,
    )
