"""Signed forgetting certificates of fulfilled deletion requests (issue 9, part 2).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import IdString, JSONDoc, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", IdString, nullable=False),
        sa.Column("deletion_request_id", IdString, nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
        sa.Column("document", JSONDoc, nullable=False),
        sa.ForeignKeyConstraint(
            ["deletion_request_id"],
            ["deletion_requests.id"],
            name="fk_certificates_deletion_request_id",
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_certificates_job_id"),
        sa.PrimaryKeyConstraint("id", name="pk_certificates"),
        sa.UniqueConstraint("deletion_request_id", name="uq_certificates_deletion_request_id"),
    )


def downgrade() -> None:
    op.drop_table("certificates")
