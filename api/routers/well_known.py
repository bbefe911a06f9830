"""Public documents anyone may fetch without a key: the certificate signing key."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import SettingsDep
from api.services import certificates

router = APIRouter(tags=["certificates"])


class SigningKey(BaseModel):
    algorithm: str
    key_id: str
    public_key: str
    public_key_pem: str


@router.get("/.well-known/obliviate/signing-key", response_model=SigningKey)
def signing_key(settings: SettingsDep) -> dict[str, str]:
    """The Ed25519 public key that signs forgetting certificates (raw base64 and PEM):
    pin it, then ``obliviate verify CERTIFICATE --public-key FILE`` checks a
    certificate offline."""
    return certificates.public_key_document(settings.signing_key_file)
