"""Deletion requests: the record compliance files, which jobs then link to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.deletion_requests import DeletionRequestCreate, DeletionRequestObject
from api.services.idempotency import (
    body_digest,
    earlier_result,
    store_idempotency_key,
)
from core.db import deletion_requests as repo
from core.db.audit import add_audit_entry
from core.spec import invalid_request_from


def create_deletion_request(
    session: Session,
    body: dict[str, Any],
    *,
    principal: str,
    idempotency_key: str | None = None,
) -> tuple[DeletionRequestObject, bool]:
    """Validate, insert the request and its audit entry, commit. Returns ``(request,
    created)``; ``created`` is False when an earlier request with the same
    ``Idempotency-Key`` (and body) made it."""
    request_sha256 = body_digest(body)
    if idempotency_key is not None:
        earlier = _replay(session, principal, idempotency_key, request_sha256)
        if earlier is not None:
            return earlier, False
    try:
        fields = DeletionRequestCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None

    view = repo.create_deletion_request(
        session,
        subject=fields.subject,
        description=fields.description,
        external_ref=fields.external_ref,
        metadata=fields.metadata,
    )
    request_id = view.request.id
    # The subject stays out of the log: it names a person, and the log keeps everything.
    add_audit_entry(
        session,
        principal=principal,
        action="deletion_request.created",
        object_type="deletion_request",
        object_id=request_id,
        data={"external_ref": fields.external_ref},
    )
    if idempotency_key is not None and not store_idempotency_key(
        session, principal, idempotency_key, request_sha256, deletion_request_id=request_id
    ):
        return _replay(session, principal, idempotency_key, request_sha256), False
    session.commit()
    return DeletionRequestObject.from_view(view), True


def get_deletion_request(session: Session, request_id: str) -> DeletionRequestObject:
    return DeletionRequestObject.from_view(repo.get_deletion_request(session, request_id))


def list_deletion_requests(
    session: Session, *, statuses: Sequence[str], after: str | None, limit: int
) -> ListObject[DeletionRequestObject]:
    page = repo.list_deletion_requests(session, statuses=statuses, after=after, limit=limit)
    data = [DeletionRequestObject.from_view(view) for view in page.items]
    return ListObject[DeletionRequestObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def _replay(
    session: Session, principal: str, key: str, request_sha256: str
) -> DeletionRequestObject | None:
    request_id = earlier_result(session, principal, key, request_sha256, made="deletion_request_id")
    return None if request_id is None else get_deletion_request(session, request_id)
