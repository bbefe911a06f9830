"""Signed checkpoints of the audit chain's head (issue 9).

The hash chain (``core.db.audit``) catches an entry edited, removed or moved, but
whoever can write to the database can also recompute every hash after an edit, head
included, and the chain then verifies. So every API process's reaper thread signs the
head periodically (``OBLIVIATE_AUDIT_CHECKPOINT_INTERVAL_S``) with the service's
Ed25519 key, the one that signs forgetting certificates, and stores the checkpoint in
``audit_checkpoints``. Rewriting history before a checkpoint now needs the private key:
the chain as recomputed must have, at entry number ``entries``, exactly the
checkpoint's ``head_hash``, and an altered checkpoint fails its signature.

Signed message: the canonical JSON (``core.certificates.canonical_json``) of
``{"at": ISO 8601 UTC, "entries": N, "head_hash": hex}``; ``key_id`` names the key
(``core.certificates.key_id_of``). A checkpoint reveals a count and a hash, nothing of
the entries; the chain is service-wide (every tenant's entries). Checkpoints in the
database can be deleted by the same person who rewrote the chain: an auditor keeps
copies (``GET /v1/audit/checkpoints``) outside the service.
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
from core.db.audit import ChainCheck, verify_chain
from core.db.pagination import Page, paginate
from core.db.tables import AuditCheckpoint, AuditHead

log = logging.getLogger(__name__)


def signed_message(*, at: datetime, entries: int, head_hash: str) -> bytes:
    return canonical_json({"at": at.isoformat(), "entries": entries, "head_hash": head_hash})


def sign_checkpoint(
    session: Session, signing_key: Ed25519PrivateKey, now: datetime
) -> AuditCheckpoint | None:
    """Sign the chain's head as it is now and add the checkpoint (not committed), when
    the head moved since the newest checkpoint; None when it did not (or the log is
    empty). A head behind the newest checkpoint, or at the same count with another
    hash, is not signed: the log lost entries, and signing would bless that."""
    head = session.execute(select(AuditHead.entries, AuditHead.head_hash)).first()
    if head is None or head.entries <= 0:
        return None
    last = session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.entries.desc()).limit(1)
    ).first()
    if last is not None and head.entries <= last.entries:
        if (head.entries, head.head_hash) != (last.entries, last.head_hash):
            log.error(
                "audit head (%d entries, %s) is not ahead of checkpoint %d (%d entries, %s): "
                "not signing it; run obliviate audit verify",
                head.entries,
                head.head_hash,
                last.id,
                last.entries,
                last.head_hash,
            )
        return None
    signature = signing_key.sign(
        signed_message(at=now, entries=head.entries, head_hash=head.head_hash)
    )
    checkpoint = AuditCheckpoint(
        at=now,
        entries=head.entries,
        head_hash=head.head_hash,
        key_id=key_id_of(signing_key.public_key()),
        signature=base64.b64encode(signature).decode(),
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def checkpoint_now(sessions, signing_key: Ed25519PrivateKey, now: datetime) -> int | None:
    """Sign and commit a checkpoint if the head moved; its id, or None. Another API
    replica signing the same head at the same moment keeps its own (one per head)."""
    with sessions() as session:
        try:
            checkpoint = sign_checkpoint(session, signing_key, now)
            session.commit()
        except IntegrityError:
            session.rollback()
            return None
        return checkpoint.id if checkpoint is not None else None


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
                at=checkpoint.at, entries=checkpoint.entries, head_hash=checkpoint.head_hash
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
    """A checkpoint as ``GET /v1/audit/checkpoints`` listed it, kept outside."""

    id: int
    at: datetime
    entries: int
    head_hash: str
    key_id: str
    signature: str

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> KeptCheckpoint:
        return cls(
            id=int(item["id"]),
            at=datetime.fromisoformat(str(item["at"]).replace("Z", "+00:00")),
            entries=int(item["entries"]),
            head_hash=str(item["head_hash"]),
            key_id=str(item["key_id"]),
            signature=str(item["signature"]),
        )


def load_kept(document: Any) -> list[KeptCheckpoint]:
    """Checkpoints kept from the API: a list of them, or a page (``{"data": [...]}``)."""
    items = document["data"] if isinstance(document, dict) else document
    return [KeptCheckpoint.from_json(item) for item in items]


def verify_log(
    session: Session,
    public_keys: Mapping[str, Ed25519PublicKey],
    kept: Iterable[KeptCheckpoint] = (),
) -> ChainCheck:
    """The audit chain and every checkpoint (the database's, plus ``kept`` copies from
    outside, which catch checkpoints deleted from it): each checkpoint's signature
    verifies with one of ``public_keys`` (by ``key_id``), then the chain is recomputed
    and must hold each checkpoint's head at its entry count. The first failure is
    reported."""
    # The checkpoints are read before the head (verify_chain reads it): none is newer.
    # populate_existing: what the database holds now, not objects this session loaded.
    statement = select(AuditCheckpoint).order_by(AuditCheckpoint.id)
    stored = list(session.scalars(statement.execution_options(populate_existing=True)))
    checkpoints = [*stored, *kept]
    for checkpoint in checkpoints:
        problem = signature_problem(checkpoint, public_keys)
        if problem is not None:
            return ChainCheck(False, 0, None, None, problem, checkpoint_id=checkpoint.id)
    return verify_chain(session, checkpoints=checkpoints)


def list_checkpoints(session: Session, *, after: int | None, limit: int) -> Page[AuditCheckpoint]:
    """Oldest first; ``after`` is the last id seen."""
    return paginate(
        session,
        select(AuditCheckpoint),
        AuditCheckpoint.id,
        after=after,
        limit=limit,
        newest_first=False,
    )
