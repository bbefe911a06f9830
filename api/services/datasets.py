from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.datasets import DatasetObject
from api.uploads import Upload
from core.data.limits import DataLimits
from core.datasets import StoredDataset, store_dataset_file
from core.datasets import record_dataset as core_record_dataset
from core.db import datasets as repo
from core.db.audit import add_audit_entry
from core.envelope import load_or_create_master_key
from core.errors import InvalidRequest
from core.shredding import shred_dataset
from core.storage import ObjectStore

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def validate_and_store(
    store: ObjectStore, upload: Upload, name: str | None, limits: DataLimits, master_key_file: Path
) -> StoredDataset:
    """Validate every record (streamed, within ``limits``), then store the file,
    encrypted under a key of its own, at ``datasets/<id>/<filename>``."""
    filename = safe_filename(upload.filename)
    name = " ".join((name or "").split()) or filename
    if len(name) > 256 or "\x00" in name:
        raise InvalidRequest("name: at most 256 characters, no NUL", param="name")
    return store_dataset_file(
        store,
        upload.path,
        master_key=load_or_create_master_key(master_key_file),
        filename=filename,
        name=name,
        limits=limits,
    )


def record_dataset(session: Session, stored: StoredDataset, *, principal: str) -> DatasetObject:
    """Insert the row of a stored upload (a row therefore always has its file) and its
    audit entry."""
    dataset = core_record_dataset(session, stored)
    add_audit_entry(
        session,
        principal=principal,
        action="dataset.created",
        object_type="dataset",
        object_id=dataset.id,
        data={"sha256": dataset.sha256, "record_count": dataset.record_count},
    )
    session.commit()
    return DatasetObject.from_row(dataset)


def safe_filename(filename: str) -> str:
    """The client's file name reduced to a safe store key segment (no folders)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = _UNSAFE_FILENAME_CHARS.sub("_", base).lstrip(".")[-200:]
    if not base:
        raise InvalidRequest(
            "the file part needs a filename ending in .jsonl, .csv or .parquet",
            param="file",
            code="unsupported_format",
        )
    return base


def get_dataset(session: Session, dataset_id: str) -> DatasetObject:
    return DatasetObject.from_row(repo.get_dataset(session, dataset_id))


def list_datasets(session: Session, *, after: str | None, limit: int) -> ListObject[DatasetObject]:
    page = repo.list_datasets(session, after=after, limit=limit)
    data = [DatasetObject.from_row(row) for row in page.items]
    return ListObject[DatasetObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def shred(
    session: Session, store: ObjectStore, dataset_id: str, *, principal: str
) -> DatasetObject:
    """Destroy the dataset's key and file (idempotent); the row stays, with its hashes,
    counts and ``shredded_at``."""
    return DatasetObject.from_row(shred_dataset(session, store, dataset_id, principal=principal))
