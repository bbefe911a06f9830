"""Webhooks: endpoints registered for job and deletion-request events, and their
delivery logs. Sending is the workers' (``core.webhooks.delivery``)."""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.webhooks import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryObject,
    WebhookObject,
)
from core.db import webhooks as repo
from core.db.audit import add_audit_entry
from core.db.tables import WEBHOOK_EVENTS
from core.errors import InvalidRequest
from core.settings import Settings
from core.spec import invalid_request_from
from core.webhooks.urls import check_webhook_url

#: ``whsec_`` and 43 URL-safe characters (256 random bits)
SECRET_PREFIX = "whsec_"


def create_webhook(
    session: Session, body: dict[str, Any], *, principal: str, settings: Settings
) -> WebhookCreated:
    """Validate (the URL must be one the service may send to), insert, audit, commit;
    the answer is the only one that shows the secret."""
    try:
        fields = WebhookCreate.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    check_webhook_url(fields.url, allow_private=settings.webhook_allow_private)
    webhook = repo.create_webhook(
        session,
        url=fields.url,
        events=fields.events,
        secret=SECRET_PREFIX + secrets.token_urlsafe(32),
        description=fields.description,
    )
    add_audit_entry(
        session,
        principal=principal,
        action="webhook.created",
        object_type="webhook",
        object_id=webhook.id,
        data={"url": webhook.url, "events": webhook.events},
    )
    session.commit()
    return WebhookCreated(**WebhookObject.from_row(webhook).model_dump(), secret=webhook.secret)


def list_webhooks(session: Session, *, after: str | None, limit: int) -> ListObject[WebhookObject]:
    page = repo.list_webhooks(session, after=after, limit=limit)
    data = [WebhookObject.from_row(webhook) for webhook in page.items]
    return ListObject[WebhookObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def get_webhook(session: Session, webhook_id: str) -> WebhookObject:
    return WebhookObject.from_row(repo.get_webhook(session, webhook_id))


def disable_webhook(session: Session, webhook_id: str, *, principal: str) -> WebhookObject:
    """Idempotent: disabling a disabled webhook changes (and audits) nothing."""
    if repo.disable_webhook(session, webhook_id):
        add_audit_entry(
            session,
            principal=principal,
            action="webhook.disabled",
            object_type="webhook",
            object_id=webhook_id,
        )
    session.commit()
    return get_webhook(session, webhook_id)


def list_deliveries(
    session: Session, webhook_id: str, *, after: str | None, limit: int
) -> ListObject[WebhookDeliveryObject]:
    page = repo.list_deliveries(session, webhook_id, after=after, limit=limit)
    data = [WebhookDeliveryObject.from_row(delivery) for delivery in page.items]
    return ListObject[WebhookDeliveryObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def _invalid(exc: ValidationError) -> InvalidRequest:
    """The first error, with a code of its own for an unknown event or a URL that is
    not http(s)://host[:port][/path]."""
    error = invalid_request_from(exc)
    kind, param = exc.errors()[0]["type"], error.param or ""
    if kind == "literal_error" and param.startswith("events."):
        error.code = "unknown_event"
        error.message = f"{param}: unknown event; one of {', '.join(WEBHOOK_EVENTS)}"
    elif kind == "string_pattern_mismatch" and param == "url":
        error.code = "invalid_webhook_url"
        error.message = (
            "url: not an http(s)://host[:port][/path] URL (a host name or IPv4 address; "
            "percent-encode non-ASCII characters)"
        )
    return error
