"""The audit log: who did what to which object, appended in the transaction of the
action it records (so an action and its entry commit or roll back together).

The table is append-only: triggers (migration 0002) make UPDATE and DELETE fail on
both databases. Entries hold ids, statuses and digests, never the text of a request
(a deletion request's subject is itself personal data, and this log keeps everything
forever).

Triggers stop mistakes, not whoever can drop them, so the log is also a **hash chain**
(migration 0005): each entry stores the previous entry's hash and its own,
``entry_hash = sha256(prev_hash + "\n" + canonical JSON of {at, principal, action,
object_type, object_id, data})``, and the single row of ``audit_head`` holds the count
and the newest hash. Appending updates that row first, which takes its lock (a row lock
on Postgres, the write lock on SQLite) until the transaction commits: appends are
serialised, so the chain's order is the ids' order. ``verify_chain`` recomputes it and
names the first entry that was edited, removed or moved; removing the newest entries
shows as a head that no longer matches.

Whoever can rewrite the whole chain and its head consistently is caught by the signed
checkpoints of the head (``core.audit_checkpoints``): ``verify_chain`` given them
checks that the chain, as recomputed, has at entry number ``entries`` exactly each
checkpoint's ``head_hash``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.db.pagination import Page, paginate
from core.db.tables import AuditEntry, AuditHead, Dataset, DeletionRequest, Job
from core.db.types import utcnow
from core.tenancy import DEFAULT_TENANT, current_tenant, scoped

#: The principal of writes the worker makes (the API's are ``anonymous`` or
#: ``key:<digest>``, see ``api.auth``).
WORKER = "worker"
#: jobs the reaper ends (worker_lost, time_limit, a cancel nobody finished)
REAPER = "reaper"
#: forget sets shredded when their retention period ran out (core.shredding)
RETENTION = "retention"
AUDIT_ACTIONS = (
    "dataset.created",
    "dataset.shredded",
    "deletion_request.created",
    "job.submitted",
    "job.cancel_requested",
    "job.pause_requested",
    "job.resumed",
    "job.finished",
    "certificate.issued",
    "deletion_request.regressed",
    "webhook.created",
    "webhook.disabled",
    "key.created",
    "key.revoked",
)

_INSERT = AuditEntry.__table__.insert()
_HEAD = AuditHead.__table__
#: the previous hash of the first entry
GENESIS = "0" * 64
HEAD_ID = 1


def entry_hash(
    prev_hash: str,
    *,
    at: datetime,
    principal: str,
    action: str,
    object_type: str,
    object_id: str,
    data: dict[str, Any] | None,
) -> str:
    content = {
        "at": at.isoformat(),
        "principal": principal,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "data": data,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def add_audit_entry(
    session: Session,
    *,
    principal: str,
    action: str,
    object_type: str,
    object_id: str,
    data: dict[str, Any] | None = None,
    tenant: str | None = None,
) -> None:
    """Append one entry to the chain (not committed); ``at`` is this process's UTC
    clock, to the microsecond (it is hashed, so it must be known before the insert).
    The entry belongs to ``tenant``, else to the bound tenant, else (the reaper, a
    management command) to the tenant of the job it is about."""
    if action not in AUDIT_ACTIONS:
        raise ValueError(f"audit action must be one of {AUDIT_ACTIONS}, got {action!r}")
    connection = session.connection()
    # Lock the head first: from here to commit no other append can interleave.
    head = _advance_head(connection)
    if head is None:
        # An emptied log (tests truncate it): recreate the head. ON CONFLICT DO NOTHING,
        # since a concurrent append may be recreating it too (it then waits for that
        # one to commit, and advances the row it made).
        insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(
            _HEAD
        )
        connection.execute(
            insert.values(id=HEAD_ID, entries=0, head_hash=GENESIS).on_conflict_do_nothing()
        )
        head = _advance_head(connection)
    prev_hash = head.head_hash
    fields = {
        "at": utcnow(),
        "principal": principal,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "data": data,
    }
    digest = entry_hash(prev_hash, **fields)
    tenant = tenant or current_tenant() or _owner_of(connection, object_type, object_id)
    connection.execute(
        _INSERT, {**fields, "prev_hash": prev_hash, "entry_hash": digest, "tenant_id": tenant}
    )
    connection.execute(_HEAD.update().where(_HEAD.c.id == HEAD_ID).values(head_hash=digest))


def _owner_of(connection, object_type: str, object_id: str) -> str:
    table = {"job": Job, "dataset": Dataset, "deletion_request": DeletionRequest}.get(object_type)
    owner = None
    if table is not None:
        owner = connection.scalar(select(table.tenant_id).where(table.id == object_id))
    return owner or DEFAULT_TENANT


def _advance_head(connection):
    return connection.execute(
        _HEAD.update()
        .where(_HEAD.c.id == HEAD_ID)
        .values(entries=_HEAD.c.entries + 1)
        .returning(_HEAD.c.head_hash)
    ).first()


class SignedHead(Protocol):
    """What a checkpoint claims (an ``AuditCheckpoint`` row, or a copy kept outside)."""

    id: int
    entries: int
    head_hash: str


@dataclass
class ChainCheck:
    """``valid`` when every entry's hash recomputes and links to the one before, the
    head names the newest, and every checkpoint given matches the chain. Otherwise
    ``entry_id`` (the first entry that fails, or None when only the head or a
    checkpoint disagrees), ``checkpoint_id`` (the checkpoint that fails, if one does)
    and ``problem`` say what. ``checkpoints``: how many checkpoints verified."""

    valid: bool
    entries: int
    head_hash: str | None
    entry_id: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    checkpoint_id: int | None = None


def _checkpoint_mismatch(checkpoint: SignedHead, actual: str, count: int, checked: int):
    problem = (
        f"checkpoint {checkpoint.id} signed the head at entry {checkpoint.entries} as "
        f"{checkpoint.head_hash[:12]}..., the chain recomputes to {actual[:12]}... there: "
        "entries up to it were rewritten after it was signed"
    )
    return ChainCheck(False, count, None, None, problem, checked, checkpoint.id)


def verify_chain(
    session: Session, *, checkpoints: Iterable[SignedHead] = (), batch: int = 10_000
) -> ChainCheck:
    """Recompute the chain up to the head as it is now (read first, so that entries
    appended meanwhile, which come after it in id order, are not part of this check),
    holding no more than ``batch`` entries at a time, and check each of
    ``checkpoints`` (read before the head, so none is newer than it; their signatures
    are the caller's to check) against the recomputed chain."""
    pending = sorted(checkpoints, key=lambda c: (c.entries, c.id))
    head = session.execute(select(_HEAD.c.entries, _HEAD.c.head_hash)).first()
    head_entries, head_hash = (head.entries, head.head_hash) if head else (0, GENESIS)
    prev_hash, count, last_id = GENESIS, 0, None
    checked = 0
    while checked < len(pending) and pending[checked].entries <= 0:
        if pending[checked].head_hash != GENESIS:
            return _checkpoint_mismatch(pending[checked], GENESIS, 0, checked)
        checked += 1
    columns = (
        AuditEntry.id,
        AuditEntry.at,
        AuditEntry.principal,
        AuditEntry.action,
        AuditEntry.object_type,
        AuditEntry.object_id,
        AuditEntry.data,
        AuditEntry.prev_hash,
        AuditEntry.entry_hash,
    )
    while count < head_entries:
        statement = select(*columns).order_by(AuditEntry.id).limit(min(batch, head_entries - count))
        if last_id is not None:
            statement = statement.where(AuditEntry.id > last_id)
        rows = session.execute(statement).all()
        if not rows:
            break
        for row in rows:
            if row.prev_hash != prev_hash:
                problem = (
                    "an entry before it was removed or the entries were reordered: its "
                    "previous hash is not the hash of the entry before it"
                )
                return ChainCheck(False, count, None, row.id, problem, checked)
            expected = entry_hash(
                prev_hash,
                at=row.at,
                principal=row.principal,
                action=row.action,
                object_type=row.object_type,
                object_id=row.object_id,
                data=row.data,
            )
            if row.entry_hash != expected:
                problem = "its content was changed after it was written"
                return ChainCheck(False, count, None, row.id, problem, checked)
            prev_hash, count, last_id = row.entry_hash, count + 1, row.id
            while checked < len(pending) and pending[checked].entries == count:
                if pending[checked].head_hash != prev_hash:
                    return _checkpoint_mismatch(pending[checked], prev_hash, count, checked)
                checked += 1
    if (head_entries, head_hash) != (count, prev_hash):
        problem = (
            f"the head records {head_entries} entries ending in {head_hash[:12]}..., the log "
            f"holds {count} ending in {prev_hash[:12]}...: the newest entries were removed"
        )
        return ChainCheck(False, count, None, None, problem, checked)
    if checked < len(pending):
        beyond = pending[checked]
        problem = (
            f"checkpoint {beyond.id} signed a head of {beyond.entries} entries, the log "
            f"holds {count}: entries were removed after it was signed"
        )
        return ChainCheck(False, count, None, None, problem, checked, beyond.id)
    return ChainCheck(True, count, prev_hash, checkpoints=checked)


def list_audit_entries(
    session: Session,
    *,
    object_id: str | None = None,
    action: str | None = None,
    principal: str | None = None,
    after: int | None = None,
    limit: int = 100,
) -> Page[AuditEntry]:
    """Oldest first (the order things happened); ``after`` is the last id seen."""
    statement = scoped(select(AuditEntry), AuditEntry.tenant_id)
    if object_id is not None:
        statement = statement.where(AuditEntry.object_id == object_id)
    if action is not None:
        statement = statement.where(AuditEntry.action == action)
    if principal is not None:
        statement = statement.where(AuditEntry.principal == principal)
    return paginate(session, statement, AuditEntry.id, after=after, limit=limit, newest_first=False)


def submitter_of(session: Session, job_id: str) -> str | None:
    """Who submitted the job: the principal of its ``job.submitted`` entry."""
    return session.scalar(
        select(AuditEntry.principal)
        .where(AuditEntry.object_id == job_id, AuditEntry.action == "job.submitted")
        .limit(1)
    )
