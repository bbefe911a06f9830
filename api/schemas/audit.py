from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from core.db.tables import AuditEntry

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
    """The audit chain recomputed from the first entry to the head."""

    object: Literal["audit_chain_check"] = "audit_chain_check"
    valid: bool
    entries: int = Field(description="Entries that verified, in id order.")
    head_hash: str | None = Field(description="The newest entry's hash (when valid).")
    entry_id: int | None = Field(
        None, description="The first entry that fails (null when only the head disagrees)."
    )
    problem: str | None = Field(None, description="What failed: edited, removed or moved.")
