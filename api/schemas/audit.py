from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.db.tables import AuditCheckpoint, AuditEntry

AuditAction = Literal[
    "dataset.created",
    "dataset.shredded",
    "deletion_request.created",
    "job.submitted",
    "job.cancel_requested",
    "job.pause_requested",
    "job.resumed",
    "job.finished",
    "certificate.issued",
    "deletion_request.regressed",
    "webhook.created",
    "webhook.disabled",
    "key.created",
    "key.revoked",
]


class AuditEntryObject(BaseModel):
    id: int
    object: Literal["audit_entry"] = "audit_entry"
    at: datetime
    principal: str
    action: AuditAction
    object_type: Literal["dataset", "deletion_request", "job", "webhook", "api_key"]
    object_id: str
    data: dict[str, Any] | None
    prev_hash: str | None = None
    entry_hash: str | None = None

    @classmethod
    def from_row(cls, entry: AuditEntry) -> AuditEntryObject:
        return cls(
            id=entry.id,
            at=entry.at,
            principal=entry.principal,
            action=entry.action,
            object_type=entry.object_type,
            object_id=entry.object_id,
            data=entry.data,
            prev_hash=entry.prev_hash,
            entry_hash=entry.entry_hash,
        )


class ChainCheckObject(BaseModel):
    """A tenant's audit chain recomputed from its first entry to its head."""

    object: Literal["audit_chain_check"] = "audit_chain_check"
    tenant: str | None = Field(
        None,
        description="Whose chain (each tenant has its own); null for the legacy "
        "service-wide chain that checkpoints signed before migration 0013.",
    )
    valid: bool
    entries: int = Field(description="The tenant's entries that verified, in id order.")
    head_hash: str | None = Field(description="The newest entry's hash (when valid).")
    entry_id: int | None = Field(
        None,
        description="The first entry that fails: edited, moved in from another tenant, or "
        "the one after an entry removed or moved out (null when only the head or a "
        "checkpoint disagrees).",
    )
    problem: str | None = Field(
        None,
        description="What failed: an entry edited, removed or moved, or a checkpoint that "
        "does not verify or does not match the chain.",
    )
    checkpoints: int = Field(0, description="Signed checkpoints whose signature and head verified.")
    checkpoint_id: int | None = Field(
        None, description="The checkpoint that fails (its signature, or its head)."
    )


class AuditCheckpointObject(BaseModel):
    """A signed copy of a tenant's audit chain head: at ``at`` the chain of ``tenant``
    held ``entries`` entries, the newest hashing to ``head_hash``. ``signature`` is
    base64 Ed25519 by the key ``key_id`` (``/.well-known/obliviate/signing-key``) over
    the canonical JSON of ``{"at", "entries", "head_hash", "tenant"}`` (keys sorted, no
    whitespace). ``tenant`` null: a legacy checkpoint of the service-wide chain, signed
    before migration 0013 over ``{"at", "entries", "head_hash"}``."""

    id: int
    object: Literal["audit_checkpoint"] = "audit_checkpoint"
    tenant: str | None
    at: datetime
    entries: int
    head_hash: str
    algorithm: Literal["Ed25519"] = "Ed25519"
    key_id: str
    signature: str

    @classmethod
    def from_row(cls, row: AuditCheckpoint) -> AuditCheckpointObject:
        return cls(
            id=row.id,
            tenant=row.tenant_id,
            at=row.at,
            entries=row.entries,
            head_hash=row.head_hash,
            key_id=row.key_id,
            signature=row.signature,
        )
