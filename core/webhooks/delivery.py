"""Sending webhook deliveries: what the workers run.

Every worker's parent process runs a :class:`WebhookSender` thread (started by
``worker.celery_app`` when the worker is ready), in embedded mode and in production
alike: it needs no broker, and it does not wait in the job queue behind a training
run. Each pass takes the due deliveries (``core.db.webhooks.claim_due``: several
workers never send one delivery at once), sends each one signed, and records the
attempt; failures are retried with exponential backoff.

The URL is checked again before every attempt (DNS may have changed since the
webhook was registered: a rebinding attack), and the request goes to the very address
that was checked, with the original host in ``Host`` (and as the TLS server name), so
a second lookup cannot send it elsewhere. Redirects are not followed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import httpx

from core.db.webhooks import DueDelivery, claim_due, record_attempt
from core.errors import InvalidRequest
from core.settings import Settings
from core.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from core.webhooks.urls import check_webhook_url

log = logging.getLogger(__name__)

USER_AGENT = "Obliviate-Webhooks/1"
#: how much of a receiver's answer is read (and logged with a failed attempt)
ANSWER_BYTES = 200
#: attempts in one pass at most (then the sender sleeps its interval)
MAX_PER_PASS = 100
#: how long past its timeout an attempt's lease lasts (then another sender may retry it)
LEASE_MARGIN_S = 30


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: int


def delivery_body(payload: dict) -> bytes:
    """The bytes sent (and signed): compact JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def send(delivery: DueDelivery, settings: Settings) -> Attempt:
    """POST one delivery, signed; never raises for what the receiver or the network
    does."""
    body = delivery_body(delivery.payload)
    try:
        checked = check_webhook_url(delivery.url, allow_private=settings.webhook_allow_private)
    except InvalidRequest as exc:
        return Attempt(None, f"refused, not sent: {exc.message}", 0)
    headers = {
        "Host": checked.parts.netloc,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: delivery.id,
        SIGNATURE_HEADER: signature_header(delivery.secret, body),
    }
    extensions = {"sni_hostname": checked.host} if checked.parts.scheme == "https" else {}
    started = time.monotonic()
    with httpx.Client(
        timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        # Each checked address in the resolver's order, as a browser would: the next
        # one only when the connection itself was refused (localhost as ::1 and
        # 127.0.0.1, with a receiver on one of them).
        for index, address in enumerate(checked.addresses):
            literal = f"[{address}]" if address.version == 6 else str(address)
            target = checked.parts._replace(netloc=f"{literal}:{checked.port}").geturl()
            try:
                status_code, answer = _post(client, target, body, headers, extensions)
                break
            except httpx.ConnectError as exc:
                if index + 1 < len(checked.addresses):
                    continue
                error = exc
            except httpx.HTTPError as exc:
                error = exc
            elapsed = int((time.monotonic() - started) * 1000)
            return Attempt(None, f"{type(error).__name__}: {error}".rstrip(": "), elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    if 200 <= status_code < 300:
        return Attempt(status_code, None, elapsed)
    return Attempt(status_code, f"the receiver answered HTTP {status_code}: {answer}", elapsed)


def _post(client: httpx.Client, target: str, body: bytes, headers, extensions) -> tuple[int, str]:
    """The status code and the start of the answer (whatever the receiver sends, at
    most ANSWER_BYTES of it are read)."""
    with client.stream(
        "POST", target, content=body, headers=headers, extensions=extensions
    ) as response:
        answer = b""
        for chunk in response.iter_bytes():
            answer += chunk
            if len(answer) >= ANSWER_BYTES:
                break
    return response.status_code, answer[:ANSWER_BYTES].decode("utf-8", "replace")


def deliver_due(sessions, settings: Settings, *, max_per_pass: int = MAX_PER_PASS) -> int:
    """One pass: send the deliveries that are due, one claim at a time (so a lease
    covers one attempt, however slow the receivers before it were). Returns how many
    were attempted."""
    attempted = 0
    while attempted < max_per_pass:
        with sessions() as session:
            due = claim_due(session, lease_s=settings.webhook_timeout_s + LEASE_MARGIN_S, limit=1)
        if not due:
            break
        [delivery] = due
        attempt = send(delivery, settings)
        with sessions() as session:
            status = record_attempt(
                session,
                delivery.id,
                status_code=attempt.status_code,
                error=attempt.error,
                duration_ms=attempt.duration_ms,
                backoff_s=settings.webhook_backoff_s,
                max_attempts=settings.webhook_max_attempts,
            )
        attempted += 1
        log.info(
            "webhook delivery %s (%s) attempt %d: %s",
            delivery.id,
            delivery.event,
            delivery.attempts + 1,
            status if attempt.error is None else f"{status}, {attempt.error}",
            extra={"delivery_id": delivery.id, "status": status},
        )
    return attempted


class WebhookSender(threading.Thread):
    """Sends due deliveries every ``webhook_interval_s`` until stopped."""

    def __init__(self, sessions, settings: Settings):
        super().__init__(name="obliviate-webhooks", daemon=True)
        self.sessions, self.settings = sessions, settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.webhook_interval_s):
            try:
                deliver_due(self.sessions, self.settings)
            except Exception:  # noqa: BLE001 - the database may be back next round
                log.exception("webhook delivery pass failed")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.settings.webhook_timeout_s + 5)
