"""Tenants and their API keys. A key is shown once, when made; the database keeps only
its sha256 (a key is 256 random bits, so a plain hash is as strong as a slow one, and
lets a request be checked with one indexed lookup)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.ids import is_id, new_id
from core.db.pagination import Page, paginate
from core.db.tables import ApiKey, Tenant
from core.db.types import utcnow
from core.errors import InvalidRequest, NotFound
from core.tenancy import ROLES, TENANT_PATTERN

KEY_PREFIX = "obl_"
#: how stale ``last_used_at`` may get: one write per key per interval, not per request
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyIdentity:
    """What a request's key says about its caller."""

    key_id: str
    tenant: str
    role: str


def ensure_tenant(session: Session, tenant: str) -> Tenant:
    """The tenant ``tenant``, made if new (flushed, not committed)."""
    if not TENANT_PATTERN.match(tenant):
        raise InvalidRequest(
            "a tenant is 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter "
            f"or digit; got {tenant!r}",
            param="tenant",
            code="invalid_tenant",
        )
    row = session.get(Tenant, tenant)
    if row is None:
        row = Tenant(id=tenant)
        session.add(row)
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:  # made meanwhile by someone else
            row = session.get(Tenant, tenant)
    return row


def create_key(
    session: Session, *, tenant: str, role: str, name: str | None = None
) -> tuple[ApiKey, str]:
    """A new key of ``tenant`` (made if new) with ``role``: the row (flushed, not
    committed) and the key itself, which is never stored."""
    if role not in ROLES:
        raise InvalidRequest(
            f"role must be one of {', '.join(ROLES)}; got {role!r}",
            param="role",
            code="invalid_role",
        )
    ensure_tenant(session, tenant)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant,
        role=role,
        name=name,
        key_hash=hash_key(secret),
        prefix=secret[: len(KEY_PREFIX) + 6],
    )
    session.add(row)
    session.flush()
    return row, secret


def identify(session: Session, key_hash: str) -> KeyIdentity | None:
    """The live key with this hash, or None (unknown or revoked)."""
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.role).where(
            ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
        )
    ).first()
    return KeyIdentity(row.id, row.tenant_id, row.role) if row else None


def any_live_keys(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def touch(session: Session, key_id: str, *, now: datetime | None = None) -> None:
    """Record a use (committed), unless one was recorded within LAST_USED_RESOLUTION."""
    now = now or utcnow()
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(ApiKey.last_used_at.is_(None) | (ApiKey.last_used_at < now - LAST_USED_RESOLUTION))
        .values(last_used_at=now)
    )
    session.commit()


def list_keys(
    session: Session, tenant: str | None, *, after: str | None = None, limit: int = 20
) -> Page[ApiKey]:
    """``tenant``'s keys, revoked ones included (every tenant's when None)."""
    statement = select(ApiKey)
    if tenant is not None:
        statement = statement.where(ApiKey.tenant_id == tenant)
    return paginate(session, statement, ApiKey.id, after=after, limit=limit)


def revoke_key(
    session: Session, key_id: str, *, tenant: str | None, now: datetime | None = None
) -> tuple[ApiKey, bool]:
    """Revoke (flushed, not committed); revoking again keeps the first time. Also says
    whether this call revoked it."""
    row = session.get(ApiKey, key_id) if is_id(key_id, "key") else None
    if row is None or (tenant is not None and row.tenant_id != tenant):
        raise NotFound(f"no API key with id {key_id!r}", param="key_id", code="key_not_found")
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = now or utcnow()
    session.flush()
    return row, True
