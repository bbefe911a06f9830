"""Signed checkpoints of each tenant's audit chain head (issue 9).

The hash chains (``core.db.audit``, one per tenant) catch an entry edited, removed or
moved, but whoever can write to the database can also recompute every hash of a chain
after an edit, head included, and the chain then verifies. So every API process's
reaper thread signs each tenant's head periodically
(``OBLIVIATE_AUDIT_CHECKPOINT_INTERVAL_S``) with the service's Ed25519 key, the one
that signs forgetting certificates, and stores the checkpoint in ``audit_checkpoints``.
Rewriting a tenant's history before a checkpoint now needs the private key: the
tenant's chain as recomputed must have, at entry number ``entries``, exactly the
checkpoint's ``head_hash``, and an altered checkpoint (its tenant included) fails its
signature.

Signed message: the canonical JSON (``core.certificates.canonical_json``) of
``{"at": ISO 8601 UTC, "entries": N, "head_hash": hex, "tenant": id}``; ``key_id``
names the key (``core.certificates.key_id_of``). A checkpoint reveals a tenant's count
and a hash, nothing of the entries. Checkpoints in the database can be deleted by the
same person who rewrote the chain: an auditor keeps copies
(``GET /v1/audit/checkpoints``, their tenant's) outside the service.

Legacy checkpoints (tenant null) were signed before migration 0013 over
``{"at", "entries", "head_hash"}`` of the one service-wide chain; migration 0013 keeps
them, and they are checked against that chain recomputed from the entries
(``core.db.audit_legacy``) by ``obliviate audit verify`` over every tenant.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.certificates import canonical_json, key_id_of
from core.db.audit import ChainCheck, chain_tenants, verify_chain
from core.db.audit_legacy import verify_legacy_checkpoints
from core.db.pagination import Page, paginate
from core.db.tables import AuditCheckpoint, AuditHead
from core.tenancy import scoped

log = logging.getLogger(__name__)


def signed_message(*, at: datetime, entries: int, head_hash: str, tenant: str | None) -> bytes:
    """What a checkpoint's signature covers; ``tenant`` None: a legacy checkpoint."""
    message = {"at": at.isoformat(), "entries": entries, "head_hash": head_hash}
    if tenant is not None:
        message["tenant"] = tenant
    return canonical_json(message)


def sign_checkpoint(
    session: Session, signing_key: Ed25519PrivateKey, now: datetime, tenant: str
) -> AuditCheckpoint | None:
    """Sign ``tenant``'s chain head as it is now and add the checkpoint (not
    committed), when the head moved since the tenant's newest checkpoint; None when it
    did not (or the tenant has no entries). A head behind the newest checkpoint, or at
    the same count with another hash, is not signed: the log lost entries, and signing
    would bless that."""
    head = session.execute(
        select(AuditHead.entries, AuditHead.head_hash).where(AuditHead.tenant_id == tenant)
    ).first()
    if head is None or head.entries <= 0:
        return None
    last = session.scalars(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tenant_id == tenant)
        .order_by(AuditCheckpoint.entries.desc())
        .limit(1)
    ).first()
    if last is not None and head.entries <= last.entries:
        if (head.entries, head.head_hash) != (last.entries, last.head_hash):
            log.error(
                "audit head of tenant %s (%d entries, %s) is not ahead of checkpoint %d "
                "(%d entries, %s): not signing it; run obliviate audit verify --tenant %s",
                tenant,
                head.entries,
                head.head_hash,
                last.id,
                last.entries,
                last.head_hash,
                tenant,
            )
        return None
    message = signed_message(at=now, entries=head.entries, head_hash=head.head_hash, tenant=tenant)
    checkpoint = AuditCheckpoint(
        tenant_id=tenant,
        at=now,
        entries=head.entries,
        head_hash=head.head_hash,
        key_id=key_id_of(signing_key.public_key()),
        signature=base64.b64encode(signing_key.sign(message)).decode(),
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def checkpoint_now(sessions, signing_key: Ed25519PrivateKey, now: datetime) -> list[int]:
    """Sign and commit a checkpoint of every tenant's head that moved, each in its own
    transaction; the new checkpoints' ids. Another API replica signing the same head at
    the same moment keeps its own (one per head)."""
    with sessions() as session:
        tenants = list(session.scalars(select(AuditHead.tenant_id).order_by(AuditHead.tenant_id)))
    made = []
    for tenant in tenants:
        with sessions() as session:
            try:
                checkpoint = sign_checkpoint(session, signing_key, now, tenant)
                session.commit()
            except IntegrityError:
                session.rollback()
                continue
            if checkpoint is not None:
                made.append(checkpoint.id)
    return made


def signature_problem(
    checkpoint: AuditCheckpoint | KeptCheckpoint, public_keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """Why ``checkpoint``'s signature does not hold, or None when it does."""
    key = public_keys.get(checkpoint.key_id)
    if key is None:
        known = ", ".join(sorted(public_keys)) or "none"
        return (
            f"checkpoint {checkpoint.id} names signing key {checkpoint.key_id!r}, not a "
            f"trusted key (trusted: {known})"
        )
    try:
        value = base64.b64decode(checkpoint.signature, validate=True)
        key.verify(
            value,
            signed_message(
                at=checkpoint.at,
                entries=checkpoint.entries,
                head_hash=checkpoint.head_hash,
                tenant=checkpoint.tenant_id,
            ),
        )
    except (InvalidSignature, ValueError):
        return (
            f"checkpoint {checkpoint.id}'s signature does not verify with key "
            f"{checkpoint.key_id}: the checkpoint was altered after it was signed"
        )
    return None


def public_keys_of(*keys: Ed25519PublicKey) -> dict[str, Ed25519PublicKey]:
    return {key_id_of(key): key for key in keys}


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint as ``GET /v1/audit/checkpoints`` listed it, kept outside.
    ``tenant_id`` None (no ``tenant`` in the copy): a legacy checkpoint."""

    id: int
    at: datetime
    entries: int
    head_hash: str
    key_id: str
    signature: str
    tenant_id: str | None = None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> KeptCheckpoint:
        tenant = item.get("tenant")
        return cls(
            id=int(item["id"]),
            at=datetime.fromisoformat(str(item["at"]).replace("Z", "+00:00")),
            entries=int(item["entries"]),
            head_hash=str(item["head_hash"]),
            key_id=str(item["key_id"]),
            signature=str(item["signature"]),
            tenant_id=None if tenant is None else str(tenant),
        )


def load_kept(document: Any) -> list[KeptCheckpoint]:
    """Checkpoints kept from the API: a list of them, or a page (``{"data": [...]}``)."""
    items = document["data"] if isinstance(document, dict) else document
    return [KeptCheckpoint.from_json(item) for item in items]


def _stored(session: Session, tenant: str | None) -> list[AuditCheckpoint]:
    """``tenant``'s checkpoints in the database (None: the legacy ones), as the database
    holds them now (populate_existing: not objects this session loaded)."""
    column = AuditCheckpoint.tenant_id
    statement = (
        select(AuditCheckpoint)
        .where(column.is_(None) if tenant is None else column == tenant)
        .order_by(AuditCheckpoint.id)
    )
    return list(session.scalars(statement.execution_options(populate_existing=True)))


def _first_bad_signature(checkpoints, public_keys, tenant: str | None) -> ChainCheck | None:
    for checkpoint in checkpoints:
        problem = signature_problem(checkpoint, public_keys)
        if problem is not None:
            return ChainCheck(
                False, 0, None, None, problem, checkpoint_id=checkpoint.id, tenant=tenant
            )
    return None


def verify_log(
    session: Session,
    public_keys: Mapping[str, Ed25519PublicKey],
    kept: Iterable[KeptCheckpoint] = (),
    *,
    tenant: str,
) -> ChainCheck:
    """``tenant``'s audit chain and every checkpoint of it (the database's, plus the
    ``kept`` copies from outside that name it, which catch checkpoints deleted from the
    database): each checkpoint's signature verifies with one of ``public_keys`` (by
    ``key_id``), then the chain is recomputed and must hold each checkpoint's head at
    its entry count. The first failure is reported."""
    # The checkpoints are read before the head (verify_chain reads it): none is newer.
    checkpoints = [*_stored(session, tenant), *(c for c in kept if c.tenant_id == tenant)]
    bad = _first_bad_signature(checkpoints, public_keys, tenant)
    if bad is not None:
        return bad
    return verify_chain(session, tenant, checkpoints=checkpoints)


def verify_legacy(
    session: Session,
    public_keys: Mapping[str, Ed25519PublicKey],
    kept: Iterable[KeptCheckpoint] = (),
) -> ChainCheck | None:
    """The legacy checkpoints (the database's and ``kept`` copies without a tenant):
    signatures, then the service-wide chain they signed, recomputed; None when there
    are none."""
    checkpoints = [*_stored(session, None), *(c for c in kept if c.tenant_id is None)]
    if not checkpoints:
        return None
    bad = _first_bad_signature(checkpoints, public_keys, None)
    if bad is not None:
        return bad
    return verify_legacy_checkpoints(session, checkpoints)


def verify_every_tenant(
    session: Session,
    public_keys: Mapping[str, Ed25519PublicKey],
    kept: Iterable[KeptCheckpoint] = (),
) -> list[ChainCheck]:
    """``verify_log`` for every tenant with a chain (entries, a head, or checkpoints in
    the database or kept), then the legacy checkpoints if there are any (``tenant``
    None)."""
    kept = list(kept)
    tenants = set(chain_tenants(session)) | {c.tenant_id for c in kept if c.tenant_id}
    checks = [verify_log(session, public_keys, kept, tenant=t) for t in sorted(tenants)]
    legacy = verify_legacy(session, public_keys, kept)
    return checks if legacy is None else [*checks, legacy]


def list_checkpoints(session: Session, *, after: int | None, limit: int) -> Page[AuditCheckpoint]:
    """Oldest first; ``after`` is the last id seen. The bound tenant's (every
    checkpoint, legacy ones included, when none is bound)."""
    return paginate(
        session,
        scoped(select(AuditCheckpoint), AuditCheckpoint.tenant_id),
        AuditCheckpoint.id,
        after=after,
        limit=limit,
        newest_first=False,
    )
