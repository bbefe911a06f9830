"""``Idempotency-Key`` handling shared by the POST routes that create things (jobs,
deletion requests): a retry with the same key and body gets what the first request
made; the same key with another body, or for the other kind of object, is a 409."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.idempotency import add_idempotency_key, find_idempotency_key
from core.errors import Conflict, InvalidRequest

MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: Visible ASCII, inner spaces allowed (HTTP drops a header value's outer whitespace),
#: e.g. a UUID. The same rule is the header's pattern in the OpenAPI document.
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7E](?:[\x20-\x7E]*[\x21-\x7E])?$"
IDEMPOTENCY_KEY_RULE = (
    f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters (inner spaces allowed)"
)


def body_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_idempotency_key(key: str) -> None:
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not re.match(IDEMPOTENCY_KEY_PATTERN, key):
        raise InvalidRequest(
            f"Idempotency-Key: {IDEMPOTENCY_KEY_RULE}",
            param="Idempotency-Key",
            code="invalid_value",
        )


def earlier_result(
    session: Session,
    principal: str,
    key: str,
    request_sha256: str,
    made: Literal["job_id", "deletion_request_id"],
) -> str | None:
    """The id the first request with this key made, or None for a new key (after
    checking the key itself)."""
    check_idempotency_key(key)
    row = find_idempotency_key(session, principal, key)
    if row is None:
        return None
    if row.request_sha256 != request_sha256:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    made_id = getattr(row, made)
    if made_id is None:
        raise Conflict(
            "this Idempotency-Key was already used for another kind of request",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return made_id


def store_idempotency_key(
    session: Session, principal: str, key: str, request_sha256: str, **made: str
) -> bool:
    """Record ``key`` for what this request made (``job_id=`` or
    ``deletion_request_id=``), in the caller's transaction. False when a concurrent
    request with the same key committed first: this transaction is rolled back (ours
    never happened) and the caller replays the winner's result."""
    try:
        add_idempotency_key(session, principal, key, request_sha256, **made)
    except IntegrityError:
        session.rollback()
        return False
    return True
