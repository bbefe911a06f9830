"""The audit log's hash chain per tenant (issue 9): each tenant's entries are chained in
id order, the tenant is part of the hashed content, and ``audit_head`` holds one row per
tenant. ``audit_checkpoints`` gains ``tenant_id`` (one checkpoint per tenant and count).

Upgrade recomputes every entry's ``prev_hash`` and ``entry_hash`` per tenant and makes
the heads, with the append-only triggers of ``audit_log`` dropped for that rewrite only
and recreated in the same transaction (on both databases). Checkpoints signed before it
signed the service-wide chain's head; they are kept unchanged as **legacy**
checkpoints (tenant null): that chain is a function of the entries alone (id order,
no tenant in the hash), so ``obliviate audit verify`` recomputes it and checks them
(``core.db.audit_legacy``). Nothing is re-signed here (a migration has no signing key);
the service signs each tenant's head at its next checkpoint interval.

Downgrade recomputes the service-wide chain (which gives back exactly the hashes the
entries had before the upgrade, so the legacy checkpoints hold again) and its one-row
head, and deletes the per-tenant checkpoints: they sign heads the old schema has no
place for.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

from core.db.types import BigSerial, JSONDoc, UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

GENESIS = "0" * 64
BATCH = 10_000
# As in migrations 0002 and 0011 (a migration keeps its own copy).
POSTGRES_TRIGGER = """
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION {table}_append_only()
"""
SQLITE_TRIGGER = """
CREATE TRIGGER {table}_no_{operation} BEFORE {operation} ON {table}
BEGIN
    SELECT RAISE(ABORT, '{table} is append-only: {operation} is not allowed');
END
"""

LOG = sa.table(
    "audit_log",
    sa.column("id", BigSerial),
    sa.column("tenant_id", sa.String),
    sa.column("at", UTCDateTime),
    sa.column("principal", sa.String),
    sa.column("action", sa.String),
    sa.column("object_type", sa.String),
    sa.column("object_id", sa.String),
    sa.column("data", JSONDoc),
    sa.column("prev_hash", sa.String),
    sa.column("entry_hash", sa.String),
)


# The two hash rules, as they are at this revision (later edits of core.db.audit must
# not change what this migration computes).
def _hash(prev_hash: str, content: dict) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _content(row) -> dict:
    return {
        "at": row.at.isoformat(),
        "principal": row.principal,
        "action": row.action,
        "object_type": row.object_type,
        "object_id": row.object_id,
        "data": row.data,
    }


def tenant_chain_hash(prev_hash: str, row) -> str:
    return _hash(prev_hash, {"tenant": row.tenant_id, **_content(row)})


def global_chain_hash(prev_hash: str, row) -> str:
    return _hash(prev_hash, _content(row))


@contextmanager
def append_only_lifted(table: str) -> Iterator[None]:
    """Drop ``table``'s UPDATE/DELETE triggers for the block, then create them again.
    Inside the migration's transaction: should the block fail, the drop rolls back."""
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(f"DROP TRIGGER {table}_no_{operation}")
    yield
    if postgres:
        op.execute(POSTGRES_TRIGGER.format(table=table))
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(SQLITE_TRIGGER.format(table=table, operation=operation))


def _entries_in_id_order() -> Iterator:
    bind = op.get_bind()
    last_id = None
    while True:
        statement = sa.select(LOG).order_by(LOG.c.id).limit(BATCH)
        if last_id is not None:
            statement = statement.where(LOG.c.id > last_id)
        rows = bind.execute(statement).all()
        if not rows:
            return
        yield rows
        last_id = rows[-1].id


def _rechain(hash_of, chain_of) -> dict:
    """Rewrite every entry's hashes, chaining each to the previous entry of the same
    chain (``chain_of(row)``); the heads: chain -> (entries, newest hash)."""
    bind = op.get_bind()
    update = (
        LOG.update()
        .where(LOG.c.id == sa.bindparam("row_id"))
        .values(prev_hash=sa.bindparam("new_prev"), entry_hash=sa.bindparam("new_hash"))
    )
    heads: dict = {}
    for rows in _entries_in_id_order():
        changes = []
        for row in rows:
            count, prev_hash = heads.get(chain_of(row), (0, GENESIS))
            digest = hash_of(prev_hash, row)
            changes.append({"row_id": row.id, "new_prev": prev_hash, "new_hash": digest})
            heads[chain_of(row)] = (count + 1, digest)
        bind.execute(update, changes)
    return heads


def upgrade() -> None:
    # A tenant's chain is read in id order: (tenant_id, id) serves that and what the
    # tenant_id index served.
    op.drop_index("ix_audit_log_tenant_id", table_name="audit_log")
    op.create_index("ix_audit_log_tenant_id_id", "audit_log", ["tenant_id", "id"])

    op.drop_table("audit_head")
    head = op.create_table(
        "audit_head",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_audit_head"),
    )
    # On SQLite the batch rebuild would drop the triggers anyway; lifted explicitly.
    with append_only_lifted("audit_checkpoints"):
        with op.batch_alter_table("audit_checkpoints") as batch:
            batch.add_column(sa.Column("tenant_id", sa.String(64), nullable=True))
            batch.drop_constraint("uq_audit_checkpoints_entries", type_="unique")
            batch.create_unique_constraint(
                "uq_audit_checkpoints_tenant_id_entries", ["tenant_id", "entries"]
            )

    with append_only_lifted("audit_log"):
        heads = _rechain(tenant_chain_hash, lambda row: row.tenant_id)
    if heads:
        op.bulk_insert(
            head,
            [
                {"tenant_id": tenant, "entries": count, "head_hash": digest}
                for tenant, (count, digest) in sorted(heads.items())
            ],
        )


def downgrade() -> None:
    with append_only_lifted("audit_checkpoints"):
        op.execute("DELETE FROM audit_checkpoints WHERE tenant_id IS NOT NULL")
        with op.batch_alter_table("audit_checkpoints") as batch:
            batch.drop_constraint("uq_audit_checkpoints_tenant_id_entries", type_="unique")
            batch.drop_column("tenant_id")
            batch.create_unique_constraint("uq_audit_checkpoints_entries", ["entries"])

    op.drop_table("audit_head")
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    with append_only_lifted("audit_log"):
        heads = _rechain(global_chain_hash, lambda row: None)
    count, digest = heads.get(None, (0, GENESIS))
    op.bulk_insert(head, [{"id": 1, "entries": count, "head_hash": digest}])

    op.drop_index("ix_audit_log_tenant_id_id", table_name="audit_log")
    op.create_index("ix_audit_log_tenant_id", "audit_log", ["tenant_id"])
