"""Certificates: Ed25519 signatures over per-field digests, checked here against an
independent recomputation (hashlib, json and cryptography called directly), and every
kind of tampering named."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import certificates

BODY = {
    "certificate_id": "cert_1",
    "deletion_request": {"id": "dr_1", "subject": "Jane Roe", "external_ref": "DSR-1"},
    "evidence": {"forget_quality": 0.42, "privleak": -3.5},
    "verdict": {"status": "forgotten", "reason": "alike", "checks": []},
    "model_after": {"files": [{"path": "model.safetensors", "sha256": "ab" * 32, "size": 3}]},
}


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def test_signature_is_over_the_canonical_field_digests(key):
    document = certificates.sign(BODY, key)
    signature = document["signature"]
    # Recompute what was signed by hand: sha256 of each field's canonical JSON ...
    digests = {
        name: hashlib.sha256(
            json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        for name, value in BODY.items()
    }
    assert signature["field_digests"] == digests
    raw = base64.b64decode(signature["public_key"])
    assert signature["key_id"] == hashlib.sha256(raw).hexdigest()[:16]
    message = json.dumps(
        {"field_digests": digests, "key_id": signature["key_id"]},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    # ... and check it with the raw Ed25519 primitive (raises if it does not verify).
    key.public_key().verify(base64.b64decode(signature["value"]), message)
    result = certificates.verify(document, key.public_key())
    assert result.valid and result.trusted_key and result.problems == []


def test_an_altered_field_is_named(key):
    document = certificates.sign(BODY, key)
    document["certificate"]["evidence"]["forget_quality"] = 0.9
    result = certificates.verify(document, key.public_key())
    assert not result.valid
    assert result.altered_fields == ["evidence"]
    assert result.problems == ["field 'evidence' differs from what was signed"]


def test_added_and_removed_fields_are_named(key):
    document = certificates.sign(BODY, key)
    del document["certificate"]["verdict"]
    document["certificate"]["note"] = "added later"
    result = certificates.verify(document)
    assert result.altered_fields == ["note", "verdict"]


def test_rewritten_digests_break_the_signature(key):
    document = certificates.sign(BODY, key)
    document["certificate"]["verdict"]["status"] = "not_forgotten"
    # The forger updates the digest too: the fields now match, the signature does not.
    document["signature"]["field_digests"] = certificates.field_digests(document["certificate"])
    result = certificates.verify(document, key.public_key())
    assert result.altered_fields == []
    assert result.problems == ["the signature does not match the signed field digests"]


def test_a_certificate_re_signed_with_another_key_fails_against_the_pinned_key(key):
    forged_body = copy.deepcopy(BODY)
    forged_body["verdict"]["status"] = "forgotten"
    forged = certificates.sign(forged_body, Ed25519PrivateKey.generate())
    assert certificates.verify(forged).valid  # intact, but signed by someone else
    result = certificates.verify(forged, key.public_key())
    assert not result.valid
    assert any("not the trusted key" in problem for problem in result.problems)


def test_a_damaged_signature_value_fails(key):
    document = certificates.sign(BODY, key)
    value = bytearray(base64.b64decode(document["signature"]["value"]))
    value[0] ^= 1
    document["signature"]["value"] = base64.b64encode(bytes(value)).decode()
    assert not certificates.verify(document, key.public_key()).valid


def test_public_keys_load_from_pem_raw_and_the_well_known_document(key):
    published = certificates.public_key_document(key.public_key())
    for text in (published["public_key_pem"], published["public_key"], json.dumps(published)):
        loaded = certificates.load_public_key(text)
        assert certificates.key_id_of(loaded) == published["key_id"]


def test_the_signing_key_is_made_once_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "keys" / "signing.pem"
    first = certificates.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = certificates.load_or_create_private_key(path)
    assert certificates.key_id_of(first.public_key()) == certificates.key_id_of(again.public_key())
