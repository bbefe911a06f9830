"""Tenants and API keys (issue 9, part 1): ``tenants``, ``api_keys`` (hashes only), and
a ``tenant_id`` on every object a tenant owns. What exists already belongs to the
``default`` tenant, except the demo datasets and models, which every tenant shares
(a null tenant).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import IdString, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DEFAULT_TENANT = "default"
OWNED = ("jobs", "deletion_requests", "webhooks", "audit_log")
SHARED_WHEN_NULL = {
    "datasets": "id NOT LIKE 'ds\\_demo\\_%' ESCAPE '\\'",
    "models": "kind <> 'demo'",
}


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", IdString, nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_used_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_api_keys_tenant_id"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.execute(
        sa.table("tenants", sa.column("id"), sa.column("created_at", UTCDateTime))
        .insert()
        .values(id=DEFAULT_TENANT, created_at=sa.func.current_timestamp())
    )
    # Plain ADD COLUMN everywhere (a SQLite batch rebuild would drop the audit triggers).
    for table in OWNED:
        op.add_column(
            table,
            sa.Column("tenant_id", sa.String(64), nullable=False, server_default=DEFAULT_TENANT),
        )
        op.create_index(f"ix_{table}_tenant_id", table, ["tenant_id"])
    for table, owned in SHARED_WHEN_NULL.items():
        op.add_column(table, sa.Column("tenant_id", sa.String(64), nullable=True))
        op.execute(f"UPDATE {table} SET tenant_id = '{DEFAULT_TENANT}' WHERE {owned}")
        op.create_index(f"ix_{table}_tenant_id", table, ["tenant_id"])


def downgrade() -> None:
    for table in (*OWNED, *SHARED_WHEN_NULL):
        op.drop_index(f"ix_{table}_tenant_id", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("tenant_id")
    op.drop_index("ix_api_keys_tenant_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
