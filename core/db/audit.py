"""The audit log: who did what to which object, appended in the transaction of the
action it records (so an action and its entry commit or roll back together).

The table is append-only: triggers (migration 0002) make UPDATE and DELETE fail on
both databases. Entries hold ids, statuses and digests, never the text of a request
(a deletion request's subject is itself personal data, and this log keeps everything
forever).

Triggers stop mistakes, not whoever can drop them, so the log is also a **hash chain
per tenant** (migrations 0005 and 0013): each entry stores the hash of its tenant's
previous entry and its own, ``entry_hash = sha256(prev_hash + "\n" + canonical JSON of
{tenant, at, principal, action, object_type, object_id, data})``, and ``audit_head``
holds one row per tenant: the count and the newest hash. The tenant is hashed, so an
entry moved to another tenant fails in both chains.

Appending updates the tenant's head row first, which takes its lock until the
transaction commits: that tenant's appends are serialised, so its chain's order is its
entries' id order (an entry's id is drawn after the lock is held). On Postgres the lock
is that row's alone: two tenants append side by side. On SQLite every write takes the
database's one write lock, so appends are serialised there anyway. A transaction that
appends for several tenants (the reaper ending several tenants' jobs) holds each of
their heads until it commits; Postgres breaks a deadlock between two such by failing
one, which the reaper retries on its next pass.

``verify_chain`` recomputes one tenant's chain and names the first entry that was
edited, removed or moved (into or out of the tenant, or within it); removing a tenant's
newest entries shows as a head that no longer matches.

Whoever can rewrite a whole chain and its head consistently is caught by the signed
checkpoints of the head (``core.audit_checkpoints``): ``verify_chain`` given a
tenant's checkpoints checks that its chain, as recomputed, has at entry number
``entries`` exactly each checkpoint's ``head_hash``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.db.pagination import Page, paginate
from core.db.tables import AuditCheckpoint, AuditEntry, AuditHead, Dataset, DeletionRequest, Job
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
#: the previous hash of a tenant's first entry
GENESIS = "0" * 64


def canonical_content(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    prev_hash: str,
    *,
    tenant: str,
    at: datetime,
    principal: str,
    action: str,
    object_type: str,
    object_id: str,
    data: dict[str, Any] | None,
) -> str:
    content = {
        "tenant": tenant,
        "at": at.isoformat(),
        "principal": principal,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "data": data,
    }
    return hashlib.sha256(f"{prev_hash}\n{canonical_content(content)}".encode()).hexdigest()


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
    tenant = tenant or current_tenant() or _owner_of(connection, object_type, object_id)
    # Lock the tenant's head first: from here to commit no other append to its chain
    # can interleave.
    head = _advance_head(connection, tenant)
    if head is None:
        # The tenant's first entry (or an emptied log: tests truncate it): make its head.
        # ON CONFLICT DO NOTHING, since a concurrent append may be making it too (it then
        # waits for that one to commit, and advances the row it made).
        insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(
            _HEAD
        )
        connection.execute(
            insert.values(tenant_id=tenant, entries=0, head_hash=GENESIS).on_conflict_do_nothing()
        )
        head = _advance_head(connection, tenant)
    prev_hash = head.head_hash
    fields = {
        "at": utcnow(),
        "principal": principal,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "data": data,
    }
    digest = entry_hash(prev_hash, tenant=tenant, **fields)
    connection.execute(
        _INSERT, {**fields, "prev_hash": prev_hash, "entry_hash": digest, "tenant_id": tenant}
    )
    connection.execute(_HEAD.update().where(_HEAD.c.tenant_id == tenant).values(head_hash=digest))


def _owner_of(connection, object_type: str, object_id: str) -> str:
    table = {"job": Job, "dataset": Dataset, "deletion_request": DeletionRequest}.get(object_type)
    owner = None
    if table is not None:
        owner = connection.scalar(select(table.tenant_id).where(table.id == object_id))
    return owner or DEFAULT_TENANT


def _advance_head(connection, tenant: str):
    return connection.execute(
        _HEAD.update()
        .where(_HEAD.c.tenant_id == tenant)
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
    """``valid`` when every entry of ``tenant``'s chain recomputes and links to the one
    before, the head names the newest, and every checkpoint given matches the chain.
    Otherwise ``entry_id`` (the first entry that fails, or None when only the head or a
    checkpoint disagrees), ``checkpoint_id`` (the checkpoint that fails, if one does)
    and ``problem`` say what. ``checkpoints``: how many checkpoints verified. ``tenant``
    None: the legacy service-wide chain (``core.db.audit_legacy``)."""

    valid: bool
    entries: int
    head_hash: str | None
    entry_id: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    checkpoint_id: int | None = None
    tenant: str | None = None


def checkpoint_mismatch(
    checkpoint: SignedHead, actual: str, count: int, checked: int, tenant: str | None
) -> ChainCheck:
    problem = (
        f"checkpoint {checkpoint.id} signed the head at entry {checkpoint.entries} as "
        f"{checkpoint.head_hash[:12]}..., the chain recomputes to {actual[:12]}... there: "
        "entries up to it were rewritten after it was signed"
    )
    return ChainCheck(False, count, None, None, problem, checked, checkpoint.id, tenant)


def checkpoint_beyond(
    checkpoint: SignedHead, count: int, checked: int, tenant: str | None
) -> ChainCheck:
    problem = (
        f"checkpoint {checkpoint.id} signed a head of {checkpoint.entries} entries, the log "
        f"holds {count}: entries were removed after it was signed"
    )
    return ChainCheck(False, count, None, None, problem, checked, checkpoint.id, tenant)


#: what ``verify_chain`` reads of an entry
ENTRY_COLUMNS = (
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


def entries_in_order(session: Session, where, up_to: int, batch: int) -> Iterator[Any]:
    """The first ``up_to`` entries matching ``where`` (None: every entry), in id order,
    read ``batch`` at a time."""
    count, last_id = 0, None
    while count < up_to:
        statement = select(*ENTRY_COLUMNS).order_by(AuditEntry.id).limit(min(batch, up_to - count))
        if where is not None:
            statement = statement.where(where)
        if last_id is not None:
            statement = statement.where(AuditEntry.id > last_id)
        rows = session.execute(statement).all()
        if not rows:
            return
        yield from rows
        count, last_id = count + len(rows), rows[-1].id


def verify_chain(
    session: Session,
    tenant: str,
    *,
    checkpoints: Iterable[SignedHead] = (),
    batch: int = 10_000,
) -> ChainCheck:
    """Recompute ``tenant``'s chain up to its head as it is now (read first, so that
    entries appended meanwhile, which come after it in id order, are not part of this
    check), holding no more than ``batch`` entries at a time, and check each of
    ``checkpoints`` (the tenant's, read before the head, so none is newer than it; their
    signatures are the caller's to check) against the recomputed chain."""
    pending = sorted(checkpoints, key=lambda c: (c.entries, c.id))
    head = session.execute(
        select(_HEAD.c.entries, _HEAD.c.head_hash).where(_HEAD.c.tenant_id == tenant)
    ).first()
    head_entries, head_hash = (head.entries, head.head_hash) if head else (0, GENESIS)
    prev_hash, count = GENESIS, 0
    checked = 0
    while checked < len(pending) and pending[checked].entries <= 0:
        if pending[checked].head_hash != GENESIS:
            return checkpoint_mismatch(pending[checked], GENESIS, 0, checked, tenant)
        checked += 1
    in_tenant = AuditEntry.tenant_id == tenant
    last_id = None
    for row in entries_in_order(session, in_tenant, head_entries, batch):
        if row.prev_hash != prev_hash:
            problem = (
                "an entry before it was removed or moved to another tenant, or the entries "
                "were reordered: its previous hash is not the hash of the entry before it"
            )
            return ChainCheck(False, count, None, row.id, problem, checked, tenant=tenant)
        if row.entry_hash != _row_hash(row, prev_hash, tenant):
            problem = "its content (or its tenant) was changed after it was written"
            return ChainCheck(False, count, None, row.id, problem, checked, tenant=tenant)
        prev_hash, count, last_id = row.entry_hash, count + 1, row.id
        while checked < len(pending) and pending[checked].entries == count:
            if pending[checked].head_hash != prev_hash:
                return checkpoint_mismatch(pending[checked], prev_hash, count, checked, tenant)
            checked += 1
    if (head_entries, head_hash) != (count, prev_hash):
        problem = (
            f"the head records {head_entries} entries ending in {head_hash[:12]}..., the log "
            f"holds {count} ending in {prev_hash[:12]}...: the newest entries were removed "
            "or moved to another tenant"
        )
        return ChainCheck(False, count, None, None, problem, checked, tenant=tenant)
    # Entries past the head are appends that committed after it was read, and the first
    # of them follows it; one that does not was moved here (or written around the head).
    after = select(*ENTRY_COLUMNS).where(in_tenant).order_by(AuditEntry.id).limit(1)
    if last_id is not None:
        after = after.where(AuditEntry.id > last_id)
    beyond = session.execute(after).first()
    if beyond is not None and not _follows(beyond, prev_hash, tenant):
        problem = (
            "it is newer than the tenant's head but does not follow it: it was moved here "
            "from another tenant, or written around the head"
        )
        return ChainCheck(False, count, None, beyond.id, problem, checked, tenant=tenant)
    if checked < len(pending):
        return checkpoint_beyond(pending[checked], count, checked, tenant)
    return ChainCheck(True, count, prev_hash, checkpoints=checked, tenant=tenant)


def _follows(row, prev_hash: str, tenant: str) -> bool:
    return row.prev_hash == prev_hash and row.entry_hash == _row_hash(row, prev_hash, tenant)


def _row_hash(row, prev_hash: str, tenant: str) -> str:
    """What ``row``'s hash should be, following ``prev_hash`` in ``tenant``'s chain."""
    return entry_hash(
        prev_hash,
        tenant=tenant,
        at=row.at,
        principal=row.principal,
        action=row.action,
        object_type=row.object_type,
        object_id=row.object_id,
        data=row.data,
    )


def chain_tenants(session: Session) -> list[str]:
    """Every tenant with a chain: entries, a head, or checkpoints (a tenant whose
    entries and head were all deleted still has its checkpoints)."""
    found = set(session.scalars(select(_HEAD.c.tenant_id)))
    found |= set(session.scalars(select(AuditEntry.tenant_id).distinct()))
    found |= set(
        session.scalars(
            select(AuditCheckpoint.tenant_id).where(AuditCheckpoint.tenant_id.is_not(None))
        )
    )
    return sorted(found)


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
