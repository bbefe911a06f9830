from __future__ import annotations

from fastapi import APIRouter, Response

from api.body import JsonObject
from api.deps import DatabaseDep, PrincipalDep, ReadDatabaseDep, SettingsDep
from api.openapi import json_body
from api.routers.params import After, Limit
from api.schemas.common import ListObject
from api.schemas.webhooks import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryObject,
    WebhookObject,
)
from api.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "", status_code=201, response_model=WebhookCreated, openapi_extra=json_body(WebhookCreate)
)
async def create_webhook(
    body: JsonObject,
    db: DatabaseDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    response: Response,
) -> WebhookCreated:
    """Register an endpoint for events (``{url, events, description}``). The answer
    holds the signing secret, shown this once: deliveries carry ``Obliviate-Signature:
    t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (docs/webhooks.md). 422
    ``forbidden_webhook_url`` for a host on a loopback, private or link-local address."""
    webhook = await db.run(webhooks.create_webhook, body, principal=principal, settings=settings)
    response.headers["Location"] = f"/v1/webhooks/{webhook.id}"
    return webhook


@router.get("", response_model=ListObject[WebhookObject])
async def list_webhooks(
    db: ReadDatabaseDep, after: After = None, limit: Limit = 20
) -> ListObject[WebhookObject]:
    """Newest first, disabled ones included."""
    return await db.run(webhooks.list_webhooks, after=after, limit=limit)


@router.get("/{webhook_id}", response_model=WebhookObject)
async def get_webhook(webhook_id: str, db: ReadDatabaseDep) -> WebhookObject:
    return await db.run(webhooks.get_webhook, webhook_id)


@router.delete("/{webhook_id}", response_model=WebhookObject)
async def disable_webhook(
    webhook_id: str, db: DatabaseDep, principal: PrincipalDep
) -> WebhookObject:
    """Disable: nothing more is sent (pending deliveries end ``failed``); the webhook
    and its delivery log stay readable."""
    return await db.run(webhooks.disable_webhook, webhook_id, principal=principal)


@router.get("/{webhook_id}/deliveries", response_model=ListObject[WebhookDeliveryObject])
async def list_deliveries(
    webhook_id: str, db: ReadDatabaseDep, after: After = None, limit: Limit = 20
) -> ListObject[WebhookDeliveryObject]:
    """Newest first: each delivery's status (``pending``, ``delivered``, ``failed``),
    attempts, and every attempt's status code or error."""
    return await db.run(webhooks.list_deliveries, webhook_id, after=after, limit=limit)
