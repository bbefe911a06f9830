"""Reads of the audit log (entries are written by the services whose actions they
record, through ``core.db.audit.add_audit_entry``)."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy.orm import Session

from api.schemas.audit import AuditEntryObject, ChainCheckObject
from api.schemas.common import ListObject
from core.db import audit as repo


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


def verify_chain(session: Session) -> ChainCheckObject:
    return ChainCheckObject(**asdict(repo.verify_chain(session)))
