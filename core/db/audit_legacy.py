"""The service-wide audit chain as it was before migration 0013, kept to check the
checkpoints signed of it (legacy checkpoints: ``audit_checkpoints.tenant_id`` null).

Before 0013 every entry, whatever its tenant, was chained in id order under one head,
``entry_hash = sha256(prev_hash + "\\n" + canonical JSON of {at, principal, action,
object_type, object_id, data})`` (no tenant). Migration 0013 rewrote the stored hashes
into per-tenant chains, but this chain is a function of the entries alone, so it can be
recomputed at any time: a legacy checkpoint still proves that the first ``entries``
entries (in id order, every tenant's) are what they were when it was signed. The stored
``prev_hash`` and ``entry_hash`` are not read here; they belong to the tenant chains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.db.audit import (
    GENESIS,
    ChainCheck,
    SignedHead,
    canonical_content,
    checkpoint_beyond,
    checkpoint_mismatch,
    entries_in_order,
)


def legacy_entry_hash(
    prev_hash: str,
    *,
    at: datetime,
    principal: str,
    action: str,
    object_type: str,
    object_id: str,
    data: dict[str, Any] | None,
) -> str:
    content = {
        "at": at.isoformat(),
        "principal": principal,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "data": data,
    }
    return hashlib.sha256(f"{prev_hash}\n{canonical_content(content)}".encode()).hexdigest()


def verify_legacy_checkpoints(
    session: Session, checkpoints: Iterable[SignedHead], *, batch: int = 10_000
) -> ChainCheck:
    """Recompute the service-wide chain up to the newest of ``checkpoints`` (legacy
    ones; their signatures are the caller's to check) and check each of them on it.
    ``tenant`` of the answer is None: the chain is every tenant's."""
    pending = sorted(checkpoints, key=lambda c: (c.entries, c.id))
    if not pending:
        return ChainCheck(True, 0, None, tenant=None)
    prev_hash, count, checked = GENESIS, 0, 0
    while checked < len(pending) and pending[checked].entries <= 0:
        if pending[checked].head_hash != GENESIS:
            return checkpoint_mismatch(pending[checked], GENESIS, 0, checked, None)
        checked += 1
    for row in entries_in_order(session, None, pending[-1].entries, batch):
        prev_hash = legacy_entry_hash(
            prev_hash,
            at=row.at,
            principal=row.principal,
            action=row.action,
            object_type=row.object_type,
            object_id=row.object_id,
            data=row.data,
        )
        count += 1
        while checked < len(pending) and pending[checked].entries == count:
            if pending[checked].head_hash != prev_hash:
                return checkpoint_mismatch(pending[checked], prev_hash, count, checked, None)
            checked += 1
    if checked < len(pending):
        return checkpoint_beyond(pending[checked], count, checked, None)
    return ChainCheck(True, count, prev_hash, checkpoints=checked, tenant=None)
