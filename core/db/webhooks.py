"""Webhooks and their deliveries: the queries the API and the workers run.

Deliveries are an outbox: :func:`job_ended` inserts them in the transaction that ends
the job (a job that ends always gets its deliveries; a rolled-back end never sends
one), and the workers' sender (``core.webhooks.delivery``) takes the due ones with
:func:`claim_due`, sends them and records each attempt with :func:`record_attempt`.

A webhook belongs to a tenant and is sent only that tenant's events
(:func:`_subscribers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.deletion_requests import get_deletion_request
from core.db.ids import is_id, new_id
from core.db.pagination import Page, paginate
from core.db.tables import WEBHOOK_EVENTS, Job, JobDeletionRequest, Webhook, WebhookDelivery
from core.db.types import utcnow
from core.errors import NotFound
from core.tenancy import owner_tenant, scoped, visible

#: how a job's status names its event
JOB_EVENTS = {status: f"job.{status}" for status in ("succeeded", "failed", "cancelled")}
#: the deletion-request statuses that are events (a request reaches them when its last
#: active job ends)
DELETION_REQUEST_EVENTS = {
    status: f"deletion_request.{status}" for status in ("fulfilled", "needs_attention")
}
#: What one attempt's log entry keeps of a receiver's error text.
MAX_ERROR_CHARS = 500


# ------------------------------------------------------------------------ webhooks


def create_webhook(
    session: Session, *, url: str, events: Sequence[str], secret: str, description: str | None
) -> Webhook:
    """Insert a webhook (flushed, not committed)."""
    webhook = Webhook(
        id=new_id("wh"),
        tenant_id=owner_tenant(),
        url=url,
        events=list(dict.fromkeys(events)),
        secret=secret,
        description=description,
        created_at=utcnow(),
    )
    session.add(webhook)
    session.flush()
    return webhook


def get_webhook(session: Session, webhook_id: str) -> Webhook:
    webhook = session.get(Webhook, webhook_id) if is_id(webhook_id, "wh") else None
    if webhook is None or not visible(webhook.tenant_id):
        raise NotFound(
            f"no webhook with id {webhook_id!r}", param="webhook_id", code="webhook_not_found"
        )
    return webhook


def list_webhooks(session: Session, *, after: str | None, limit: int) -> Page[Webhook]:
    """Newest first, disabled ones included (their deliveries stay readable)."""
    statement = scoped(select(Webhook), Webhook.tenant_id)
    return paginate(session, statement, Webhook.id, after=after, limit=limit)


def disable_webhook(session: Session, webhook_id: str, *, now: datetime | None = None) -> bool:
    """Stop sending to a webhook: no new deliveries, and its pending ones end ``failed``.
    Returns False when it was disabled already. Not committed."""
    now = now or utcnow()
    webhook = get_webhook(session, webhook_id)
    if webhook.disabled_at is not None:
        return False
    webhook.disabled_at = now
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == "pending")
        .values(status="failed", next_attempt_at=None, last_error="the webhook was disabled")
    )
    session.flush()
    return True


def list_deliveries(
    session: Session, webhook_id: str, *, after: str | None, limit: int
) -> Page[WebhookDelivery]:
    """A webhook's deliveries, newest first."""
    get_webhook(session, webhook_id)
    statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    return paginate(session, statement, WebhookDelivery.id, after=after, limit=limit)


# ---------------------------------------------------------------------- the outbox


def emit(
    session: Session,
    event: str,
    data: dict[str, Any],
    *,
    tenant: str,
    now: datetime | None = None,
) -> list[str]:
    """Queue ``event`` for every active webhook of ``tenant`` that subscribed to it (not
    committed: it is sent only if the caller's transaction commits). Returns the
    delivery ids."""
    if event not in WEBHOOK_EVENTS:
        raise ValueError(f"webhook event must be one of {WEBHOOK_EVENTS}, got {event!r}")
    webhooks = _subscribers(session, event, tenant)
    if not webhooks:
        return []
    now = now or utcnow()
    payload = {"id": new_id("evt"), "type": event, "created_at": now.isoformat(), "data": data}
    deliveries = [
        WebhookDelivery(
            id=new_id("whd"),
            webhook_id=webhook_id,
            event=event,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            attempt_log=[],
            created_at=now,
        )
        for webhook_id in webhooks
    ]
    session.add_all(deliveries)
    session.flush()
    return [delivery.id for delivery in deliveries]


def job_ended(session: Session, job_id: str, *, now: datetime | None = None) -> None:
    """The events of a job that just ended (call it in the transaction that ended it):
    ``job.<status>``, and ``deletion_request.fulfilled`` or ``.needs_attention`` when
    the job served a request that this ending settles. Costs one query when no webhook
    is registered."""
    if not session.scalar(select(Webhook.id).where(Webhook.disabled_at.is_(None)).limit(1)):
        return
    job = session.execute(
        select(
            Job.id,
            Job.status,
            Job.kind,
            Job.method,
            Job.model,
            Job.deletion_request_id,
            Job.output_model_id,
            Job.error_code,
            Job.error_message,
            Job.verdict,
            Job.finished_at,
            Job.tenant_id,
        ).where(Job.id == job_id)
    ).one()
    if job.status not in JOB_EVENTS:
        return
    emit(
        session,
        JOB_EVENTS[job.status],
        {
            "job": {
                "id": job.id,
                "status": job.status,
                "kind": job.kind,
                "method": job.method,
                "model": job.model,
                "deletion_request_id": job.deletion_request_id,
                "output_model_id": job.output_model_id,
                "error": {"code": job.error_code, "message": job.error_message}
                if job.error_code
                else None,
                "verdict": (job.verdict or {}).get("status"),
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            }
        },
        tenant=job.tenant_id,
        now=now,
    )
    # Every request the job served (a batch job serves several): while this job was
    # active each was in_progress, so a settled status now is a change.
    served = session.scalars(
        select(JobDeletionRequest.deletion_request_id)
        .where(JobDeletionRequest.job_id == job.id)
        .order_by(JobDeletionRequest.deletion_request_id)
    ).all()
    for request_id in served:
        view = get_deletion_request(session, request_id)
        if view.status in DELETION_REQUEST_EVENTS:
            emit(
                session,
                DELETION_REQUEST_EVENTS[view.status],
                {
                    # No subject: it names a person, and deliveries leave the service.
                    "deletion_request": {
                        "id": view.request.id,
                        "status": view.status,
                        "status_reason": view.status_reason,
                        "external_ref": view.request.external_ref,
                        "job_id": job.id,
                    }
                },
                tenant=job.tenant_id,
                now=now,
            )


def _subscribers(session: Session, event: str, tenant: str) -> list[str]:
    """``tenant``'s active webhooks that take ``event`` (the event lists are short JSON
    arrays, matched here rather than with each database's JSON operators)."""
    rows = session.execute(
        select(Webhook.id, Webhook.events).where(
            Webhook.disabled_at.is_(None), Webhook.tenant_id == tenant
        )
    ).all()
    return [row.id for row in rows if event in (row.events or [])]


# --------------------------------------------------------------------- the sender


@dataclass(frozen=True)
class DueDelivery:
    """What a sender needs for one attempt, read when it claimed the delivery."""

    id: str
    event: str
    payload: dict[str, Any]
    attempts: int
    url: str
    secret: str


def claim_due(
    session: Session, *, lease_s: float, limit: int = 20, now: datetime | None = None
) -> list[DueDelivery]:
    """Take up to ``limit`` pending deliveries whose time has come, oldest first: each
    is leased to this sender for ``lease_s`` (its ``next_attempt_at`` moves past the
    lease, in a conditional UPDATE, so two senders never take the same one; a sender
    that dies mid-attempt lets it come due again). Commits."""
    now = now or utcnow()
    due = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.webhook_id)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    ).all()
    claimed = []
    for row in due:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == row.id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + timedelta(seconds=lease_s))
        )
        if result.rowcount == 1:
            claimed.append(row.id)
    session.commit()
    if not claimed:
        return []
    rows = session.execute(
        select(WebhookDelivery, Webhook.url, Webhook.secret)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id.in_(claimed))
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
    ).all()
    session.commit()
    return [
        DueDelivery(
            id=delivery.id,
            event=delivery.event,
            payload=delivery.payload,
            attempts=delivery.attempts,
            url=url,
            secret=secret,
        )
        for delivery, url, secret in rows
    ]


def record_attempt(
    session: Session,
    delivery_id: str,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    backoff_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> str:
    """Log one attempt (the receiver's status code, or why no answer came) and move the
    delivery on: ``delivered`` on a 2xx, else ``pending`` again after an exponential
    backoff (``backoff_s``, doubled at each failure) or ``failed`` after
    ``max_attempts``. Returns the new status. Commits."""
    now = now or utcnow()
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != "pending":
        session.rollback()
        return delivery.status if delivery is not None else "failed"
    attempts = delivery.attempts + 1
    ok = error is None and status_code is not None and 200 <= status_code < 300
    error = None if ok else (error or f"the receiver answered HTTP {status_code}")
    error = error[:MAX_ERROR_CHARS] if error else None
    entry = {
        "attempt": attempts,
        "at": now.isoformat(),
        "status_code": status_code,
        "error": error,
        "duration_ms": duration_ms,
    }
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_status_code": status_code,
        "last_error": error,
        "attempt_log": [*delivery.attempt_log, entry],
    }
    if ok:
        values.update(status="delivered", delivered_at=now, next_attempt_at=None)
    elif attempts >= max_attempts:
        values.update(status="failed", next_attempt_at=None)
    else:
        wait = backoff_s * 2 ** (attempts - 1)
        values.update(next_attempt_at=now + timedelta(seconds=wait))
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending")
        .values(**values)
    )
    session.commit()
    return values.get("status", "pending")
