"""Storing a dataset file: validate every record, encrypt the file under a key of its
own and put the ciphertext in the object store (no database: parsing a large file
takes seconds that must not hold a connection), then insert the row with the wrapped
key, so a row always has its file. Used by uploads and the demo. And reading it back:
every reader goes through ``fetch_dataset_file``, which decrypts."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from core import envelope
from core.data.limits import DataLimits
from core.data.records import RecordSummary, scan_records
from core.db import datasets as repo
from core.db.ids import new_id
from core.db.tables import Dataset
from core.errors import InvalidRequest, ObliviateError
from core.storage import ObjectStore


@dataclass
class StoredDataset:
    """A file that passed validation and is in the store, not yet recorded."""

    dataset_id: str
    name: str
    filename: str
    storage_key: str
    summary: RecordSummary
    wrapped_key: bytes | None = None


def store_dataset_file(
    store: ObjectStore,
    path: Path,
    *,
    master_key: bytes,
    filename: str,
    name: str,
    dataset_id: str | None = None,
    limits: DataLimits | None = None,
) -> StoredDataset:
    """``filename`` must already be a safe key segment. Every record is validated in one
    streaming pass (none is kept), within ``limits`` (the settings' by default); the
    store receives only ciphertext, under a new data key wrapped by ``master_key``."""
    summary = scan_records(path, name=filename, limits=limits)
    dataset_id = dataset_id or new_id("ds")
    storage_key = f"datasets/{dataset_id}/{filename}"
    data_key = envelope.new_data_key()
    with tempfile.TemporaryDirectory(prefix="obliviate-seal-") as folder:
        sealed = Path(folder) / "sealed"
        envelope.encrypt_file(data_key, path, sealed)
        store.put_file(storage_key, sealed)
    wrapped = envelope.wrap_key(master_key, data_key, dataset_id)
    return StoredDataset(dataset_id, name, filename, storage_key, summary, wrapped)


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
        wrapped_key=stored.wrapped_key,
    )


def fetch_dataset_file(
    store: ObjectStore, row: Dataset, path: Path, *, master_key_file: Path, param: str
) -> None:
    """Write the plaintext of a stored dataset to ``path``: decrypted with its own key,
    or copied as is for a file stored before encryption (no wrapped key). 422
    ``dataset_shredded`` once it was shredded; ``dataset_unreadable`` when its key does
    not unwrap or its file does not authenticate."""
    if row.shredded_at is not None:
        raise shredded_error(row.id, param)
    if row.wrapped_key is None:
        store.download_file(row.storage_key, path)
        return
    try:
        data_key = envelope.unwrap_key(
            envelope.load_master_key(master_key_file), row.wrapped_key, row.id
        )
        sealed = path.with_name(f".{path.name}.sealed")
        store.download_file(row.storage_key, sealed)
        try:
            envelope.decrypt_file(data_key, sealed, path)
        finally:
            sealed.unlink(missing_ok=True)
    except envelope.EnvelopeError as exc:
        raise ObliviateError(str(exc), param=param, code="dataset_unreadable") from None


def shredded_error(dataset_id: str, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param}: dataset {dataset_id} was shredded (its key and file are destroyed; "
        "only its hashes and counts remain); upload the data again to use it",
        param=param,
        code="dataset_shredded",
    )
