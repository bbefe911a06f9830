"""Checkpoint files and evaluation reports, streamed from the object store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from sqlalchemy.orm import Session

from api.schemas.jobs import CheckpointList, CheckpointObject
from core.db import artifacts as repo
from core.db.jobs import get_job
from core.errors import Conflict, NotFound
from core.storage import ObjectNotFound, ObjectStore

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png$")


@dataclass
class StoredFile:
    """Where a downloadable file is; looked up in the database, read from the store."""

    key: str
    filename: str
    size: int | None = None


def list_checkpoints(session: Session, job_id: str) -> CheckpointList:
    get_job(session, job_id)
    return CheckpointList(
        data=[CheckpointObject.from_row(row) for row in repo.list_checkpoints(session, job_id)]
    )


def checkpoint_file(session: Session, job_id: str, checkpoint_id: str, path: str) -> StoredFile:
    """Only paths listed in the checkpoint row can be read: the URL never becomes an
    arbitrary store key."""
    checkpoint = repo.get_checkpoint(session, job_id, checkpoint_id)
    listed = {item["path"]: item for item in checkpoint.files}
    if path not in listed:
        raise NotFound(
            f"checkpoint {checkpoint.name} has no file {path!r}",
            param="path",
            code="file_not_found",
        )
    return StoredFile(
        key=f"{checkpoint.storage_prefix}/{path}",
        filename=PurePosixPath(path).name,
        size=listed[path].get("size"),
    )


def report_file(session: Session, job_id: str, name: str) -> StoredFile:
    """``report.json``, ``report.html`` or a plot (PNG) stored next to them."""
    report = _report(session, job_id)
    if name == REPORT_JSON:
        return StoredFile(key=report.json_key, filename=name)
    if name == REPORT_HTML:
        if report.html_key is None:
            raise Conflict(f"job {job_id} has no HTML report", code="report_not_ready")
        return StoredFile(key=report.html_key, filename=name)
    if not PLOT_NAME.match(name):
        raise NotFound(f"no report file {name!r}", param="name", code="file_not_found")
    prefix = report.json_key.rsplit("/", 1)[0] if "/" in report.json_key else ""
    return StoredFile(key=f"{prefix}/{name}" if prefix else name, filename=name)


def read_stored(store: ObjectStore, stored: StoredFile) -> bytes:
    try:
        return store.get_bytes(stored.key)
    except ObjectNotFound:
        raise NotFound(
            f"stored file {stored.filename} is missing", param="name", code="file_not_found"
        ) from None


def open_stored(store: ObjectStore, stored: StoredFile) -> Iterator[bytes]:
    try:
        if stored.size is None and not store.exists(stored.key):
            raise ObjectNotFound(stored.key)
        return store.iter_chunks(stored.key)
    except ObjectNotFound:
        raise NotFound(
            f"stored file {stored.filename} is missing", param="name", code="file_not_found"
        ) from None


def _report(session: Session, job_id: str):
    get_job(session, job_id)
    report = repo.get_report(session, job_id)
    if report is None:
        # 409, not 404: the job exists; its report does not exist yet.
        raise Conflict(
            f"job {job_id} has no report yet; it is written after evaluation",
            param="job_id",
            code="report_not_ready",
        )
    return report
