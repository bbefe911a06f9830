"""Deletion requests (jobs and idempotency keys may link to one) and the append-only
audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import BigSerial, IdString, JSONDoc, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY_MESSAGE = "audit_log is append-only"

# Postgres: one function for both operations; TG_OP names the one refused.
POSTGRES_APPEND_ONLY = f"""
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % is not allowed', TG_OP;
END;
$$
"""
POSTGRES_TRIGGER = """
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
"""
SQLITE_TRIGGER = """
CREATE TRIGGER audit_log_no_{operation} BEFORE {operation} ON audit_log
BEGIN
    SELECT RAISE(ABORT, '{message}: {operation} is not allowed');
END
"""


def upgrade() -> None:
    op.create_table(
        "deletion_requests",
        sa.Column("id", IdString, nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("external_ref", sa.String(256), nullable=True),
        sa.Column("metadata", JSONDoc, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deletion_requests"),
    )
    # On SQLite these rebuild the tables; migrations/env.py turns foreign-key
    # enforcement off meanwhile, since dropping the old jobs table would otherwise fail
    # on the rows of job_events, checkpoints, ... that reference it.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("deletion_request_id", IdString, nullable=True))
        batch.create_foreign_key(
            "fk_jobs_deletion_request_id", "deletion_requests", ["deletion_request_id"], ["id"]
        )
        batch.create_index("ix_jobs_deletion_request_id", ["deletion_request_id"])
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("job_id", existing_type=IdString, nullable=True)
        batch.add_column(sa.Column("deletion_request_id", IdString, nullable=True))
        batch.create_foreign_key(
            "fk_idempotency_keys_deletion_request_id",
            "deletion_requests",
            ["deletion_request_id"],
            ["id"],
        )
        batch.create_check_constraint(
            "ck_idempotency_keys_one_target",
            "(job_id IS NULL) <> (deletion_request_id IS NULL)",
        )

    op.create_table(
        "audit_log",
        sa.Column("id", BigSerial, autoincrement=True, nullable=False),
        sa.Column("at", UTCDateTime, server_default=sa.func.now(), nullable=False),
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=False),
        sa.Column("object_id", IdString, nullable=False),
        sa.Column("data", JSONDoc, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_object_id", "audit_log", ["object_id"])
    op.create_index("ix_audit_log_principal", "audit_log", ["principal"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_APPEND_ONLY)
        op.execute(POSTGRES_TRIGGER)
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(SQLITE_TRIGGER.format(operation=operation, message=APPEND_ONLY_MESSAGE))


def downgrade() -> None:
    # Dropping the table drops its triggers; the Postgres function goes separately.
    op.drop_index("ix_audit_log_principal", table_name="audit_log")
    op.drop_index("ix_audit_log_object_id", table_name="audit_log")
    op.drop_table("audit_log")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_log_append_only()")

    # Keys that made deletion requests have nothing to point at any more.
    op.execute("DELETE FROM idempotency_keys WHERE job_id IS NULL")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_constraint("ck_idempotency_keys_one_target", type_="check")
        batch.drop_constraint("fk_idempotency_keys_deletion_request_id", type_="foreignkey")
        batch.drop_column("deletion_request_id")
        batch.alter_column("job_id", existing_type=IdString, nullable=False)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_deletion_request_id")
        batch.drop_constraint("fk_jobs_deletion_request_id", type_="foreignkey")
        batch.drop_column("deletion_request_id")
    op.drop_table("deletion_requests")
