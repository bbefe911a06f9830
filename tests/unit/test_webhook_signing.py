"""Webhook signatures against an HMAC computed here, independently of the module."""

from __future__ import annotations

import hashlib
import hmac

from core.net import is_forbidden_address, resolve_addresses
from core.webhooks.signing import signature_header, verify_signature

SECRET = "whsec_test-secret"
BODY = b'{"type":"job.succeeded","data":{"job":{"id":"job_1"}}}'
T = 1_790_000_000


def independent_header(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, "sha256")
    return f"t={timestamp},v1={digest.hexdigest()}"


def test_the_header_is_hmac_sha256_of_timestamp_dot_body():
    assert signature_header(SECRET, BODY, T) == independent_header(SECRET, T, BODY)
    assert (
        len(signature_header(SECRET, BODY, T).split("v1=")[1]) == hashlib.sha256().digest_size * 2
    )


def test_verify_accepts_a_genuine_signature_within_tolerance():
    header = independent_header(SECRET, T, BODY)
    assert verify_signature(SECRET, header, BODY, 300, now=T)
    assert verify_signature(SECRET, header, BODY, 300, now=T + 299)
    # a second v1 (e.g. during a secret rotation): any match will do
    assert verify_signature(SECRET, header + ",v1=" + "0" * 64, BODY, 300, now=T)


def test_verify_rejects_tampering_replay_and_garbage():
    header = independent_header(SECRET, T, BODY)
    assert not verify_signature("whsec_other", header, BODY, 300, now=T)
    assert not verify_signature(SECRET, header, BODY + b" ", 300, now=T)
    assert not verify_signature(SECRET, header, BODY, 300, now=T + 301)  # replayed late
    assert not verify_signature(SECRET, header, BODY, 300, now=T - 301)
    # the timestamp is signed: moving it forward breaks the signature
    moved = header.replace(f"t={T}", f"t={T + 100}")
    assert not verify_signature(SECRET, moved, BODY, 300, now=T + 100)
    for bad in ("", "t=abc,v1=00", f"t={T}", "v1=" + "0" * 64, "nonsense"):
        assert not verify_signature(SECRET, bad, BODY, 300, now=T)


def test_forbidden_addresses():
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::",
    ):
        assert is_forbidden_address(resolve_addresses(address)[0]), address
    for address in ("93.184.216.34", "8.8.8.8", "2606:4700::1111"):
        assert not is_forbidden_address(resolve_addresses(address)[0]), address


def test_the_documented_recipe_verifies_a_delivery():
    """docs/webhooks.md's language-neutral recipe, run as written."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    recipe = next(
        block.split("```", 1)[0]
        for block in doc.split("```python")[1:]
        if "compare_digest" in block.split("```", 1)[0]
    )
    header = signature_header(SECRET, BODY)
    for secret, body, expected in ((SECRET, BODY, True), ("whsec_x", BODY, False),
                                   (SECRET, BODY + b"!", False)):  # fmt: skip
        scope = {"header": header, "secret": secret, "raw_body": body}
        exec(recipe, scope)  # noqa: S102 - our own documentation
        assert scope["ok"] is expected
