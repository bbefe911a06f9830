"""Batched deletion requests: a request may carry its records, model and job settings
(``deletion_requests.forget_dataset_id``, ``model``, ``job_settings``, ``batch_id``);
``deletion_batches`` groups the requests one job serves; ``job_deletion_requests``
links jobs to the requests they serve (every existing ``jobs.deletion_request_id`` link
is copied in: status derivation reads the link table from now on).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import IdString, JSONDoc, UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deletion_batches",
        sa.Column("id", IdString, nullable=False),
        sa.Column("tenant_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("model", sa.String(2048), nullable=False),
        sa.Column("settings_key", sa.String(64), nullable=False),
        sa.Column("job_settings", JSONDoc, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("closes_at", UTCDateTime, nullable=False),
        sa.Column("dispatched_at", UTCDateTime, nullable=True),
        sa.Column("job_id", IdString, nullable=True),
        sa.Column("union_dataset_id", IdString, nullable=True),
        sa.Column("cost", JSONDoc, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deletion_batches"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_deletion_batches_job_id"),
        sa.ForeignKeyConstraint(
            ["union_dataset_id"], ["datasets.id"], name="fk_deletion_batches_union_dataset_id"
        ),
        sa.UniqueConstraint("job_id", name="uq_deletion_batches_job_id"),
    )
    op.create_index("ix_deletion_batches_tenant_id", "deletion_batches", ["tenant_id"])
    op.create_index(
        "ix_deletion_batches_status_closes_at", "deletion_batches", ["status", "closes_at"]
    )
    with op.batch_alter_table("deletion_requests") as batch:
        batch.add_column(sa.Column("forget_dataset_id", IdString, nullable=True))
        batch.add_column(sa.Column("model", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("job_settings", JSONDoc, nullable=True))
        batch.add_column(sa.Column("batch_id", IdString, nullable=True))
        batch.create_foreign_key(
            "fk_deletion_requests_forget_dataset_id", "datasets", ["forget_dataset_id"], ["id"]
        )
        batch.create_index("ix_deletion_requests_batch_id", ["batch_id"])
    op.create_table(
        "job_deletion_requests",
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("deletion_request_id", IdString, nullable=False),
        sa.Column("tenant_id", sa.String(64), server_default="default", nullable=False),
        sa.Column("records_verdict", sa.String(16), nullable=True),
        sa.Column("records_evidence", JSONDoc, nullable=True),
        sa.Column("records", JSONDoc, nullable=True),
        sa.PrimaryKeyConstraint("job_id", "deletion_request_id", name="pk_job_deletion_requests"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_deletion_requests_job_id"),
        sa.ForeignKeyConstraint(
            ["deletion_request_id"],
            ["deletion_requests.id"],
            name="fk_job_deletion_requests_deletion_request_id",
        ),
    )
    op.create_index(
        "ix_job_deletion_requests_deletion_request_id",
        "job_deletion_requests",
        ["deletion_request_id"],
    )
    # Every link made before this table: a job submitted for a request serves it.
    op.execute(
        "INSERT INTO job_deletion_requests (job_id, deletion_request_id, tenant_id) "
        "SELECT id, deletion_request_id, tenant_id FROM jobs "
        "WHERE deletion_request_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("job_deletion_requests")
    with op.batch_alter_table("deletion_requests") as batch:
        batch.drop_index("ix_deletion_requests_batch_id")
        batch.drop_constraint("fk_deletion_requests_forget_dataset_id", type_="foreignkey")
        batch.drop_column("batch_id")
        batch.drop_column("job_settings")
        batch.drop_column("model")
        batch.drop_column("forget_dataset_id")
    op.drop_table("deletion_batches")
