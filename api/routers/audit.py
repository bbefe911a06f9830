from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReadDatabaseDep, SettingsDep
from api.routers.params import Cursor
from api.schemas.audit import (
    AuditAction,
    AuditCheckpointObject,
    AuditEntryObject,
    ChainCheckObject,
)
from api.schemas.common import ListObject
from api.services import audit
from core.db.ids import ID_PATTERN
from core.db.tables import AuditCheckpoint, AuditEntry

router = APIRouter(prefix="/v1/audit", tags=["audit"])

PRINCIPAL_PATTERN = r"^[A-Za-z0-9:_-]{1,64}$"
EntryCursor = Cursor(AuditEntry.id, "Last entry id seen (`last_id`).")
CheckpointCursor = Cursor(AuditCheckpoint.id, "Last checkpoint id seen (`last_id`).")


@router.get("", response_model=ListObject[AuditEntryObject])
async def list_audit_entries(
    db: ReadDatabaseDep,
    object_id: Annotated[str | None, Query(pattern=ID_PATTERN.pattern)] = None,
    action: AuditAction | None = None,
    principal: Annotated[
        str | None,
        Query(
            pattern=PRINCIPAL_PATTERN,
            description="`anonymous` (no auth), `key:<digest>` (an API key), `worker`.",
        ),
    ] = None,
    after: EntryCursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListObject[AuditEntryObject]:
    """The append-only audit log, oldest first (the order things happened): page on
    with ``after`` = ``last_id``. Filters: ``object_id`` (a dataset, job or deletion
    request), ``action``, ``principal``. Entries record who (the API key's digest,
    ``anonymous`` without auth, ``worker`` for job endings) did what to which object,
    written in the same transaction as the action; the database refuses to update or
    delete them."""
    return await db.run(
        audit.list_audit_entries,
        object_id=object_id,
        action=action,
        principal=principal,
        after=after,
        limit=limit,
    )


@router.get("/verify", response_model=ChainCheckObject)
async def verify_audit_chain(db: ReadDatabaseDep, settings: SettingsDep) -> ChainCheckObject:
    """Recompute the caller's tenant's audit hash chain from its first entry and check
    every signed checkpoint of its head: ``valid`` false names the first entry that was
    edited, removed or moved (within the tenant's chain, or into or out of it:
    ``entry_id``, ``problem``), a head that no longer matches (the newest entries
    removed), or a checkpoint (``checkpoint_id``) whose signature fails or whose head
    the recomputed chain does not reach (history rewritten before it, even re-hashed
    consistently). Each tenant has its own chain; ``tenant`` names it. Reads the whole
    chain: on a large one, run ``obliviate audit verify --tenant T`` beside the
    database instead."""
    return await db.run(audit.verify_chain, key_path=settings.signing_key_file)


@router.get("/checkpoints", response_model=ListObject[AuditCheckpointObject])
async def list_audit_checkpoints(
    db: ReadDatabaseDep,
    after: CheckpointCursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListObject[AuditCheckpointObject]:
    """The signed checkpoints of the caller's tenant's audit chain head, oldest first
    (page on with ``after`` = ``last_id``). The service signs each tenant's head every
    ``OBLIVIATE_AUDIT_CHECKPOINT_INTERVAL_S`` when it moved. Keep copies outside the
    service: someone able to rewrite the database can delete checkpoints, not forge
    them. A checkpoint holds the tenant, a count and a hash, nothing of its entries."""
    return await db.run(audit.list_checkpoints, after=after, limit=limit)
