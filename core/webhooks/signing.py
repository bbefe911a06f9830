"""Signatures of webhook deliveries. Standard library only: receivers may copy this file.

Each delivery carries the header::

    Obliviate-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

where ``secret`` is the webhook's signing secret (UTF-8, shown once when the webhook was
registered) and ``body`` is the raw request body, byte for byte. The timestamp is
signed with the body so that a captured delivery cannot be replayed later than the
receiver's tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Obliviate-Signature"
EVENT_HEADER = "Obliviate-Event"
DELIVERY_HEADER = "Obliviate-Delivery"


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``b"<timestamp>." + body`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Obliviate-Signature`` value for ``body`` signed at ``timestamp`` (now)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={compute_signature(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """True when ``header`` (the ``Obliviate-Signature`` value) signs ``body`` (the raw
    bytes received) with ``secret``, at a time within ``tolerance_s`` of ``now``
    (default: this machine's clock). Several ``v1=`` values are accepted (any may match).
    Compares in constant time."""
    timestamp = None
    signatures = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = compute_signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, signature) for signature in signatures)
