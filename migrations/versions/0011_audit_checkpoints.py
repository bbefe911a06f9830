"""Signed checkpoints of the audit chain's head (issue 9): ``audit_checkpoints``, one
row per head the service signed, append-only like ``audit_log`` (triggers on both
databases).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import BigSerial, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "audit_checkpoints is append-only"
POSTGRES_APPEND_ONLY = f"""
CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % is not allowed', TG_OP;
END;
$$
"""
POSTGRES_TRIGGER = """
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only()
"""
SQLITE_TRIGGER = """
CREATE TRIGGER audit_checkpoints_no_{operation} BEFORE {operation} ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, '{message}: {operation} is not allowed');
END
"""


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", BigSerial, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_checkpoints"),
        sa.UniqueConstraint("entries", name="uq_audit_checkpoints_entries"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_APPEND_ONLY)
        op.execute(POSTGRES_TRIGGER)
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(SQLITE_TRIGGER.format(operation=operation, message=APPEND_ONLY_MESSAGE))


def downgrade() -> None:
    # Dropping the table drops its triggers; the Postgres function goes separately.
    op.drop_table("audit_checkpoints")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_checkpoints_append_only()")
