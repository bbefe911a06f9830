"""Forgetting certificates: signing and offline verification (no database, no torch).

A certificate is a JSON document ``{"certificate": BODY, "signature": SIG}``. BODY's
top-level fields (the request, the job, the models, the data, the evidence, the
verdict, the audit entries) are each digested (sha256 of their canonical JSON) into
``SIG.field_digests``; the Ed25519 signature covers the canonical JSON of those digests
plus the key id. So a verifier can say *which* field was altered (its digest no longer
matches), and any change to the digests themselves breaks the signature.

Canonical JSON: keys sorted, no whitespace, UTF-8 (``json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``). Floats are written as Python writes
them (shortest round-trip form), so verify with the same rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.secret_files import create_once

CERTIFICATE_VERSION = "1"
ALGORITHM = "Ed25519"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def field_digests(body: dict[str, Any]) -> dict[str, str]:
    return {name: sha256_hex(canonical_json(value)) for name, value in body.items()}


def _signed_message(digests: dict[str, str], key_id: str) -> bytes:
    return canonical_json({"field_digests": digests, "key_id": key_id})


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the raw public key's sha256: names the key in a
    certificate, so a verifier holding several keys picks the right one."""
    return sha256_hex(public_key_raw(key))[:16]


def public_key_document(key: Ed25519PublicKey) -> dict[str, str]:
    """What the well-known endpoint serves: the key in raw base64 and in PEM."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id_of(key),
        "public_key": base64.b64encode(public_key_raw(key)).decode(),
        "public_key_pem": pem,
    }


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed certificate for ``body`` (a JSON object of JSON values), copied
    through JSON so that what is returned is exactly what was digested."""
    body = json.loads(canonical_json(body))
    public = key.public_key()
    key_id = key_id_of(public)
    digests = field_digests(body)
    signature = key.sign(_signed_message(digests, key_id))
    return {
        "certificate": body,
        "signature": {
            "algorithm": ALGORITHM,
            "key_id": key_id,
            "public_key": base64.b64encode(public_key_raw(public)).decode(),
            "field_digests": digests,
            "value": base64.b64encode(signature).decode(),
        },
    }


@dataclass
class Verification:
    """``valid`` when the signature and every field digest check out. ``problems`` says
    what failed, naming each altered field (``altered_fields``)."""

    valid: bool
    key_id: str | None = None
    trusted_key: bool = False
    altered_fields: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """From PEM, a raw base64 key, or the well-known endpoint's JSON document."""
    if isinstance(text, bytes):
        text = text.decode()
    text = text.strip()
    if text.startswith("{"):
        text = json.loads(text)["public_key"]
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the public key is not an Ed25519 key")
        return key
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def verify(document: dict[str, Any], trusted: Ed25519PublicKey | None = None) -> Verification:
    """Check a certificate offline. Without ``trusted`` the key embedded in the
    certificate is used: that proves the document is intact, not who signed it
    (``trusted_key`` says which)."""
    result = Verification(valid=False)
    body, signature = document.get("certificate"), document.get("signature")
    if not isinstance(body, dict) or not isinstance(signature, dict):
        result.problems.append("not a certificate: 'certificate' and 'signature' objects needed")
        return result
    if signature.get("algorithm") != ALGORITHM:
        result.problems.append(f"signature.algorithm must be {ALGORITHM!r}")
        return result
    result.key_id = signature.get("key_id")
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(signature["public_key"]))
        value = base64.b64decode(signature["value"], validate=True)
    except (KeyError, TypeError, ValueError):
        result.problems.append("signature.public_key and signature.value must be base64")
        return result
    key = trusted or embedded
    result.trusted_key = trusted is not None
    if key_id_of(embedded) != result.key_id:
        result.problems.append("signature.public_key does not match signature.key_id")
    if trusted is not None and key_id_of(trusted) != result.key_id:
        result.problems.append(
            f"signed with key {result.key_id}, not the trusted key {key_id_of(trusted)}"
        )
    signed = signature.get("field_digests")
    if not isinstance(signed, dict):
        result.problems.append("signature.field_digests is missing")
        return result
    actual = field_digests(body)
    result.altered_fields = sorted(
        name for name in set(signed) | set(actual) if signed.get(name) != actual.get(name)
    )
    for name in result.altered_fields:
        result.problems.append(f"field {name!r} differs from what was signed")
    try:
        key.verify(value, _signed_message(signed, str(result.key_id)))
    except InvalidSignature:
        result.problems.append("the signature does not match the signed field digests")
    result.valid = not result.problems
    return result


def model_files_digest(folder: Path) -> list[dict[str, Any]]:
    """``[{path, sha256, size}]`` of every file under ``folder`` (sorted by path), the
    form a checkpoint's manifest lists its files in."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files.append(
            {
                "path": path.relative_to(folder).as_posix(),
                "sha256": digest.hexdigest(),
                "size": path.stat().st_size,
            }
        )
    return files


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The service's signing key: read from ``path`` (PEM, PKCS8, unencrypted), or made
    there on first use, readable by the owner only. Production mounts one shared key
    (every API replica must sign with the same key)."""
    create_once(
        path,
        lambda: Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key
