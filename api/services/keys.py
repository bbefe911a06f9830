"""API keys of the caller's tenant: made, listed and revoked by its admins."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.keys import KeyCreate, KeyCreated, KeyObject
from core.db import keys as repo
from core.db.audit import add_audit_entry
from core.spec import invalid_request_from


def create_key(
    session: Session, body: dict[str, Any], *, tenant: str, principal: str
) -> KeyCreated:
    try:
        fields = KeyCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    row, secret = repo.create_key(session, tenant=tenant, role=fields.role, name=fields.name)
    add_audit_entry(
        session,
        principal=principal,
        action="key.created",
        object_type="api_key",
        object_id=row.id,
        data={"role": row.role, "name": row.name},
    )
    session.commit()
    return KeyCreated(**KeyObject.from_row(row).model_dump(), key=secret)


def list_keys(
    session: Session, *, tenant: str, after: str | None, limit: int
) -> ListObject[KeyObject]:
    page = repo.list_keys(session, tenant, after=after, limit=limit)
    data = [KeyObject.from_row(key) for key in page.items]
    return ListObject[KeyObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def revoke_key(session: Session, key_id: str, *, tenant: str, principal: str) -> KeyObject:
    """Idempotent: revoking a revoked key changes (and audits) nothing."""
    row, revoked = repo.revoke_key(session, key_id, tenant=tenant)
    if revoked:
        add_audit_entry(
            session,
            principal=principal,
            action="key.revoked",
            object_type="api_key",
            object_id=row.id,
        )
    session.commit()
    return KeyObject.from_row(row)
