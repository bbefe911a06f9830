from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from core.db.tables import AuditEntry

AuditAction = Literal[
    "dataset.created",
    "deletion_request.created",
    "job.submitted",
    "job.cancel_requested",
    "job.pause_requested",
    "job.resumed",
    "job.finished",
    "certificate.issued",
]


class AuditEntryObject(BaseModel):
    id: int
    object: Literal["audit_entry"] = "audit_entry"
    at: datetime
    principal: str
    action: AuditAction
    object_type: Literal["dataset", "deletion_request", "job"]
    object_id: str
    data: dict[str, Any] | None

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
        )
