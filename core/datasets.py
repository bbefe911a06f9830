"""Storing a dataset file: validate every record and put the file in the object store
(no database: parsing a large file takes seconds that must not hold a connection),
then insert the row, so a row always has its file. Used by uploads and the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from core.data.records import RecordSet, parse_records
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
    records: RecordSet


def store_dataset_file(
    store: ObjectStore, path: Path, *, filename: str, name: str, dataset_id: str | None = None
) -> StoredDataset:
    """``filename`` must already be a safe key segment."""
    records = parse_records(path.read_bytes(), name=filename)
    dataset_id = dataset_id or new_id("ds")
    storage_key = f"datasets/{dataset_id}/{filename}"
    store.put_file(storage_key, path)
    return StoredDataset(dataset_id, name, filename, storage_key, records)


def record_dataset(session: Session, stored: StoredDataset) -> Dataset:
    """Insert the row of a stored file. Flushed, not committed."""
    records = stored.records
    return repo.create_dataset(
        session,
        dataset_id=stored.dataset_id,
        name=stored.name,
        filename=stored.filename,
        format=records.format,
        kind=records.kind,
        record_count=len(records),
        size_bytes=records.size_bytes,
        sha256=records.sha256,
        storage_key=stored.storage_key,
        columns=records.columns,
        has_truth_ratio_fields=records.has_truth_ratio_fields,
    )
