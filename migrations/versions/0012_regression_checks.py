"""Regression re-checks (issue 9): ``regression_checks``, one row per certified deletion
request that a later job re-checked because its base model was built on the certified
one; a request whose newest check regressed needs attention again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import IdString, JSONDoc, UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regression_checks",
        sa.Column("id", IdString, nullable=False),
        sa.Column("tenant_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("deletion_request_id", IdString, nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("certified_job_id", IdString, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("regressed", sa.Boolean, nullable=False),
        sa.Column("result", JSONDoc, nullable=False),
        sa.Column("checked_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_regression_checks"),
        sa.ForeignKeyConstraint(
            ["deletion_request_id"],
            ["deletion_requests.id"],
            name="fk_regression_checks_deletion_request_id",
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_regression_checks_job_id"),
        sa.ForeignKeyConstraint(
            ["certified_job_id"], ["jobs.id"], name="fk_regression_checks_certified_job_id"
        ),
    )
    op.create_index("ix_regression_checks_tenant_id", "regression_checks", ["tenant_id"])
    op.create_index(
        "ix_regression_checks_deletion_request_id", "regression_checks", ["deletion_request_id"]
    )


def downgrade() -> None:
    op.drop_table("regression_checks")
