from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ReadDatabaseDep
from api.routers.params import Cursor
from api.schemas.audit import AuditAction, AuditEntryObject, ChainCheckObject
from api.schemas.common import ListObject
from api.services import audit
from core.db.ids import ID_PATTERN
from core.db.tables import AuditEntry

router = APIRouter(prefix="/v1/audit", tags=["audit"])

PRINCIPAL_PATTERN = r"^[A-Za-z0-9:_-]{1,64}$"
EntryCursor = Cursor(AuditEntry.id, "Last entry id seen (`last_id`).")


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
async def verify_audit_chain(db: ReadDatabaseDep) -> ChainCheckObject:
    """Recompute the audit log's hash chain from its first entry: ``valid`` false names
    the first entry that was edited, removed or moved (``entry_id``, ``problem``), or a
    head that no longer matches (the newest entries removed). Reads the whole log: on a
    large one, run ``obliviate audit verify`` beside the database instead."""
    return await db.run(audit.verify_chain)
