"""The audit log's hash chain (issue 9): ``audit_log.prev_hash`` and ``entry_hash``,
and ``audit_head`` (the count and the newest hash). Entries already written are chained
here, in id order, with the append-only triggers lifted for that backfill only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

from core.db.types import BigSerial, JSONDoc, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As in migration 0002 (a migration keeps its own copy: later edits must not change it).
APPEND_ONLY_MESSAGE = "audit_log is append-only"
SQLITE_TRIGGER = """
CREATE TRIGGER audit_log_no_{operation} BEFORE {operation} ON audit_log
BEGIN
    SELECT RAISE(ABORT, '{message}: {operation} is not allowed');
END
"""
GENESIS = "0" * 64


def upgrade() -> None:
    # Plain ADD COLUMN (no batch rebuild, which would drop the SQLite triggers).
    op.add_column("audit_log", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("audit_log", sa.Column("entry_hash", sa.String(64), nullable=True))
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    _chain_existing_entries()


def entry_hash(prev_hash: str, **fields) -> str:
    """The rule of this revision (core.db.audit's changed in 0013, so kept here)."""
    content = {**fields, "at": fields["at"].isoformat()}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _chain_existing_entries() -> None:
    bind = op.get_bind()
    log = sa.table(
        "audit_log",
        sa.column("id", BigSerial),
        sa.column("at", UTCDateTime),
        sa.column("principal", sa.String),
        sa.column("action", sa.String),
        sa.column("object_type", sa.String),
        sa.column("object_id", sa.String),
        sa.column("data", JSONDoc),
        sa.column("prev_hash", sa.String),
        sa.column("entry_hash", sa.String),
    )
    rows = bind.execute(sa.select(log).order_by(log.c.id)).all()
    sqlite = bind.dialect.name == "sqlite"
    if rows:
        if sqlite:
            op.execute("DROP TRIGGER audit_log_no_UPDATE")
        else:
            op.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    prev = GENESIS
    for row in rows:
        digest = entry_hash(
            prev,
            at=row.at,
            principal=row.principal,
            action=row.action,
            object_type=row.object_type,
            object_id=row.object_id,
            data=row.data,
        )
        bind.execute(
            log.update().where(log.c.id == row.id).values(prev_hash=prev, entry_hash=digest)
        )
        prev = digest
    if rows:
        if sqlite:
            op.execute(SQLITE_TRIGGER.format(operation="UPDATE", message=APPEND_ONLY_MESSAGE))
        else:
            op.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    head = sa.table("audit_head", sa.column("id"), sa.column("entries"), sa.column("head_hash"))
    bind.execute(head.insert().values(id=1, entries=len(rows), head_hash=prev))


def downgrade() -> None:
    op.drop_table("audit_head")
    # Plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would drop the triggers.
    op.execute("ALTER TABLE audit_log DROP COLUMN entry_hash")
    op.execute("ALTER TABLE audit_log DROP COLUMN prev_hash")
