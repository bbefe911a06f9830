from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import StrictBody
from core.db.tables import ApiKey

Role = Literal["admin", "submitter", "viewer", "auditor"]


class KeyCreate(StrictBody):
    role: Role = Field(
        ...,
        description="admin: keys, webhooks, everything; submitter: datasets, jobs, "
        "deletion requests; viewer: read; auditor: read, the audit log and certificates.",
    )
    name: str | None = Field(None, max_length=256, description="What the key is for.")


class KeyObject(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    tenant: str
    role: str
    name: str | None
    prefix: str = Field(..., description="The key's first characters, to tell keys apart.")
    created_at: datetime
    last_used_at: datetime | None = Field(
        ..., description="Recorded at most once a minute per key."
    )
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, key: ApiKey) -> KeyObject:
        return cls(
            id=key.id,
            tenant=key.tenant_id,
            role=key.role,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            last_used_at=key.last_used_at,
            revoked_at=key.revoked_at,
        )


class KeyCreated(KeyObject):
    """The new key, shown this once: only its hash is kept."""

    key: str = Field(..., description="Send as 'Authorization: Bearer <key>'; shown only here.")
