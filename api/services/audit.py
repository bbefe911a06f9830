"""Reads of the audit log (entries are written by the services whose actions they
record, through ``core.db.audit.add_audit_entry``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sqlalchemy.orm import Session

from api.schemas.audit import AuditCheckpointObject, AuditEntryObject, ChainCheckObject
from api.schemas.common import ListObject
from api.services.certificates import signing_key
from core import audit_checkpoints
from core.db import audit as repo
from core.tenancy import owner_tenant


def list_audit_entries(
    session: Session,
    *,
    object_id: str | None,
    action: str | None,
    principal: str | None,
    after: int | None,
    limit: int,
) -> ListObject[AuditEntryObject]:
    page = repo.list_audit_entries(
        session, object_id=object_id, action=action, principal=principal, after=after, limit=limit
    )
    data = [AuditEntryObject.from_row(entry) for entry in page.items]
    return ListObject[AuditEntryObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def verify_chain(session: Session, *, key_path: Path) -> ChainCheckObject:
    """The caller's tenant's chain and every checkpoint of it, with the service's own
    public key."""
    keys = audit_checkpoints.public_keys_of(signing_key(key_path).public_key())
    tenant = owner_tenant()
    return ChainCheckObject(**asdict(audit_checkpoints.verify_log(session, keys, tenant=tenant)))


def list_checkpoints(
    session: Session, *, after: int | None, limit: int
) -> ListObject[AuditCheckpointObject]:
    page = audit_checkpoints.list_checkpoints(session, after=after, limit=limit)
    data = [AuditCheckpointObject.from_row(row) for row in page.items]
    return ListObject[AuditCheckpointObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )
