from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import StrictBody
from core.db.tables import Webhook, WebhookDelivery

WebhookEvent = Literal[
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "deletion_request.fulfilled",
    "deletion_request.needs_attention",
]
DeliveryStatus = Literal["pending", "delivered", "failed"]


_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
#: The shape of a webhook URL: http(s), a host name or IPv4 address, an optional port,
#: then printable ASCII (percent-encode the rest). Whether the host resolves, and to an
#: address the service may send to, is checked against DNS (422 unresolvable_webhook_url,
#: forbidden_webhook_url).
WEBHOOK_URL_PATTERN = f"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(?::{_PORT})?(?:[/?#][!-~]*)?$"


class WebhookCreate(StrictBody):
    url: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        pattern=WEBHOOK_URL_PATTERN,
        description="http(s) endpoint on a public address (loopback, private and "
        "link-local addresses only with OBLIVIATE_WEBHOOK_ALLOW_PRIVATE).",
    )
    events: list[WebhookEvent] = Field(
        ..., min_length=1, max_length=16, description="The events to send to it."
    )
    description: str | None = Field(None, max_length=1024)


class WebhookObject(BaseModel):
    object: Literal["webhook"] = "webhook"
    id: str
    url: str
    events: list[str]
    description: str | None
    active: bool
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def from_row(cls, webhook: Webhook) -> WebhookObject:
        return cls(
            id=webhook.id,
            url=webhook.url,
            events=webhook.events,
            description=webhook.description,
            active=webhook.disabled_at is None,
            created_at=webhook.created_at,
            disabled_at=webhook.disabled_at,
        )


class WebhookCreated(WebhookObject):
    """The new webhook with its signing secret, shown this once (docs/webhooks.md)."""

    secret: str = Field(
        ..., description="HMAC-SHA256 key of the Obliviate-Signature header; shown only here."
    )


class DeliveryAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDeliveryObject(BaseModel):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str
    webhook_id: str
    event: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[DeliveryAttempt]

    @classmethod
    def from_row(cls, delivery: WebhookDelivery) -> WebhookDeliveryObject:
        return cls(
            id=delivery.id,
            webhook_id=delivery.webhook_id,
            event=delivery.event,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            payload=delivery.payload,
            attempt_log=delivery.attempt_log,
        )
