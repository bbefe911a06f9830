"""Deletion requests: the record compliance files, which jobs then link to."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.deletion_requests import (
    DeletionBatchObject,
    DeletionRequestCreate,
    DeletionRequestObject,
)
from api.services.idempotency import (
    body_digest,
    earlier_result,
    store_idempotency_key,
)
from api.services.jobs import check_references
from core import batch_settings
from core.batch_settings import as_request_error, batch_job_spec
from core.db import deletion_batches as batches_repo
from core.db import deletion_requests as repo
from core.db.audit import add_audit_entry
from core.db.datasets import get_dataset
from core.deletion_batches import dispatch_batch, dispatch_due
from core.errors import InvalidRequest, NotFound
from core.settings import Settings
from core.spec import invalid_request_from
from core.storage import ObjectStore

log = logging.getLogger(__name__)


def create_deletion_request(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    celery,
    body: dict[str, Any],
    *,
    principal: str,
    idempotency_key: str | None = None,
) -> tuple[DeletionRequestObject, bool]:
    """Validate, insert the request and its audit entry, commit. Returns ``(request,
    created)``; ``created`` is False when an earlier request with the same
    ``Idempotency-Key`` (and body) made it. A request filed with its records, model
    and job settings joins its batch (``core.deletion_batches``); with a window of 0
    the batch becomes a job at once."""
    request_sha256 = body_digest(body)
    if idempotency_key is not None:
        earlier = _replay(session, principal, idempotency_key, request_sha256)
        if earlier is not None:
            return earlier, False
    try:
        fields = DeletionRequestCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    served = _served_by_the_service(session, settings, fields)

    view = repo.create_deletion_request(
        session,
        subject=fields.subject,
        description=fields.description,
        external_ref=fields.external_ref,
        metadata=fields.metadata,
        forget_dataset_id=fields.forget_dataset,
        model=fields.model,
        job_settings=served.settings if served else None,
    )
    request_id = view.request.id
    if served is not None:
        view.batch = batches_repo.join_open_batch(
            session,
            view.request,
            settings_key=served.key,
            job_settings=served.settings,
            window_s=settings.deletion_batch_window_seconds,
        )
        view.batch_requests = batches_repo.member_ids(session, [view.batch.id])[view.batch.id]
    # The subject stays out of the log: it names a person, and the log keeps everything.
    add_audit_entry(
        session,
        principal=principal,
        action="deletion_request.created",
        object_type="deletion_request",
        object_id=request_id,
        data={
            "external_ref": fields.external_ref,
            **({"batch": view.batch.id, "model": fields.model} if served else {}),
        },
    )
    if idempotency_key is not None and not store_idempotency_key(
        session, principal, idempotency_key, request_sha256, deletion_request_id=request_id
    ):
        return _replay(session, principal, idempotency_key, request_sha256), False
    session.commit()
    if served is not None and settings.deletion_batch_window_seconds == 0:
        # No window: serve it now rather than at the reaper's next pass (which serves it
        # anyway if this fails: the request is filed either way).
        try:
            dispatch_batch(session, store, settings, celery, view.batch.id)
        except Exception:  # noqa: BLE001 - the request is filed; the reaper retries
            session.rollback()
            log.exception("could not dispatch deletion batch %s now", view.batch.id)
        return get_deletion_request(session, request_id), True
    return DeletionRequestObject.from_view(view), True


@dataclass
class _ServedRequest:
    """A request the service serves itself: its batch key and job settings."""

    key: str
    settings: dict[str, Any]


def _served_by_the_service(
    session: Session, settings: Settings, fields: DeletionRequestCreate
) -> _ServedRequest | None:
    """Check a request filed with its records, model and job settings the way a job
    submission is checked (every reference, the method's hyperparameters), with errors
    naming the request's fields. None for a request without them (served by jobs its
    user submits)."""
    given = {"forget_dataset": fields.forget_dataset, "model": fields.model, "job": fields.job}
    if all(value is None for value in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise InvalidRequest(
            f"{missing[0]}: missing; a request the service serves itself needs "
            "forget_dataset, model and job together",
            param=missing[0],
            code="missing_field",
        )
    try:  # a foreign dataset gets the very answer an unknown one does
        dataset = get_dataset(session, fields.forget_dataset)
    except NotFound:
        raise NotFound(
            f"forget_dataset: no dataset with id {fields.forget_dataset!r}",
            param="forget_dataset",
            code="dataset_not_found",
        ) from None
    spec = batch_job_spec(fields.model, dataset.id, fields.job)
    try:
        check_references(session, settings, spec)
    except InvalidRequest as exc:
        raise as_request_error(exc) from None
    job_settings = batch_settings.job_settings(spec)
    return _ServedRequest(
        key=batch_settings.settings_key(fields.model, job_settings, dataset.kind),
        settings=job_settings,
    )


def flush_batches(
    session: Session, settings: Settings, store: ObjectStore, celery
) -> ListObject[DeletionBatchObject]:
    """Serve the caller's open batches now, without waiting for their windows."""
    batches = dispatch_due(session, store, settings, celery, flush=True)
    members = batches_repo.member_ids(session, [batch.id for batch in batches])
    data = [DeletionBatchObject.from_row(batch, members.get(batch.id, [])) for batch in batches]
    return ListObject[DeletionBatchObject](
        data=data, has_more=False, last_id=data[-1].id if data else None
    )


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
