"""Crypto-shredding: a dataset's personal data is erased by destroying its key.

Each stored dataset is encrypted under a key of its own (``core.envelope``), kept only
wrapped in its row. Shredding sets that column to NULL, in the same transaction as
``shredded_at`` and a ``dataset.shredded`` audit entry; from the commit on, every copy
of the ciphertext (the object, its versions and replicas, backups of the store) is
unreadable. The object is then deleted as well. What remains is the row: name, sha256,
record count, sizes, and the jobs, reports and certificates that refer to it.

Shredding happens on request (``POST /v1/datasets/{id}/shred``) or when the retention
period after a deletion request's fulfilment ran out (``sweep_retention``, run by the
API's reaper thread).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from core.db import datasets as repo
from core.db.audit import RETENTION, add_audit_entry
from core.db.deletion_requests import forget_sets_due
from core.db.tables import Dataset
from core.db.types import utcnow
from core.errors import Conflict
from core.storage import ObjectStore

log = logging.getLogger(__name__)


def shred_dataset(
    session: Session,
    store: ObjectStore,
    dataset_id: str,
    *,
    principal: str,
    reason: str = "request",
    now: datetime | None = None,
) -> Dataset:
    """Destroy the dataset's key (committed), then its stored file. Idempotent: a second
    call changes nothing and writes no audit entry, but deletes the file again should
    an earlier delete have failed. 404 ``dataset_not_found``; 409 ``dataset_in_use``
    while an unfinished job reads it (it would fail without its data)."""
    dataset = repo.get_dataset(session, dataset_id)
    if dataset.shredded_at is None:
        readers = repo.unfinished_jobs_using(session, dataset.id)
        if readers:
            raise Conflict(
                f"dataset {dataset.id} is read by unfinished job(s) {', '.join(readers)}; "
                "shred it once they have ended (or cancel them)",
                param="dataset_id",
                code="dataset_in_use",
            )
        if repo.mark_shredded(session, dataset.id, now or utcnow()):
            add_audit_entry(
                session,
                principal=principal,
                action="dataset.shredded",
                object_type="dataset",
                object_id=dataset.id,
                data={
                    "sha256": dataset.sha256,
                    "record_count": dataset.record_count,
                    "reason": reason,
                },
            )
        session.commit()
        session.refresh(dataset)
    # The key is gone with the commit: what the store still holds is unreadable. The
    # row keeps storage_key, so a failed delete is retried by the next call.
    store.delete_prefix(dataset.storage_key)
    return dataset


def sweep_retention(
    sessions, store: ObjectStore, retention_days: float | None, *, now: datetime
) -> list[str]:
    """Shred the forget sets whose deletion request was fulfilled more than
    ``retention_days`` before ``now`` (none when retention is unset). A set still read
    by an unfinished job waits for a later sweep. Returns the ids shredded."""
    if retention_days is None:
        return []
    with sessions() as session:
        due = forget_sets_due(session, now - timedelta(days=retention_days))
    shredded = []
    for dataset_id in due:
        with sessions() as session:
            try:
                shred_dataset(
                    session, store, dataset_id, principal=RETENTION, reason="retention", now=now
                )
            except Conflict as exc:
                log.info("retention: %s", exc.message)
                continue
        shredded.append(dataset_id)
    if shredded:
        log.info("retention: shredded forget set(s) %s", ", ".join(shredded))
    return shredded
