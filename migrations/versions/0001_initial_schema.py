"""Initial schema: datasets, models, jobs, job events and metrics, checkpoints, reports,
idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import IdString, JSONDoc, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", IdString, nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("record_count", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(1024), nullable=False),
        sa.Column("columns", JSONDoc, nullable=False),
        sa.Column("has_truth_ratio_fields", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    # models.job_id -> jobs and jobs.output_model_id -> models form a cycle: models is
    # created first and gets its foreign key once jobs exists.
    op.create_table(
        "models",
        sa.Column("id", IdString, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("source", sa.String(2048), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", IdString, nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", IdString, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("model", sa.String(2048), nullable=False),
        sa.Column("forget_dataset_id", IdString, nullable=False),
        sa.Column("retain_dataset_id", IdString, nullable=True),
        sa.Column("spec", JSONDoc, nullable=False),
        sa.Column("hyperparameters", JSONDoc, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("metadata", JSONDoc, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("enqueued_at", UTCDateTime, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("heartbeat_at", UTCDateTime, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(256), nullable=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("total_steps", sa.Integer, nullable=True),
        sa.Column("epoch", sa.Float, nullable=False),
        sa.Column("trained_tokens", sa.BigInteger, nullable=False),
        sa.Column("estimated_finish", UTCDateTime, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("error_param", sa.String(512), nullable=True),
        sa.Column("cancel_requested_at", UTCDateTime, nullable=True),
        sa.Column("output_model_id", IdString, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(
            ["forget_dataset_id"], ["datasets.id"], name="fk_jobs_forget_dataset_id"
        ),
        sa.ForeignKeyConstraint(
            ["retain_dataset_id"], ["datasets.id"], name="fk_jobs_retain_dataset_id"
        ),
        sa.ForeignKeyConstraint(["output_model_id"], ["models.id"], name="fk_jobs_output_model_id"),
    )
    op.create_index("ix_jobs_status_method", "jobs", ["status", "method"])
    op.create_index("ix_jobs_updated_at", "jobs", ["updated_at"])
    with op.batch_alter_table("models") as batch:
        batch.create_foreign_key("fk_models_job_id", "jobs", ["job_id"], ["id"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", JSONDoc, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_events_job_id"),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])

    op.create_table(
        "job_metrics",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Float, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("values", JSONDoc, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_metrics"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_metrics_job_id"),
    )
    op.create_index("ix_job_metrics_job_id_step", "job_metrics", ["job_id", "step"])

    op.create_table(
        "checkpoints",
        sa.Column("id", IdString, nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("storage_prefix", sa.String(1024), nullable=False),
        sa.Column("files", JSONDoc, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("metrics", JSONDoc, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_checkpoints_job_id"),
        sa.UniqueConstraint("job_id", "name", name="uq_checkpoints_job_id_name"),
    )

    op.create_table(
        "reports",
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("schema_version", sa.String(16), nullable=False),
        sa.Column("summary", JSONDoc, nullable=False),
        sa.Column("json_key", sa.String(1024), nullable=False),
        sa.Column("html_key", sa.String(1024), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("job_id", name="pk_reports"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_reports_job_id"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.String(64), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("principal", "key", name="pk_idempotency_keys"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_idempotency_keys_job_id"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("reports")
    op.drop_table("checkpoints")
    op.drop_index("ix_job_metrics_job_id_step", table_name="job_metrics")
    op.drop_table("job_metrics")
    op.drop_index("ix_job_events_job_id", table_name="job_events")
    op.drop_table("job_events")
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("fk_models_job_id", type_="foreignkey")
    op.drop_index("ix_jobs_updated_at", table_name="jobs")
    op.drop_index("ix_jobs_status_method", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("models")
    op.drop_table("datasets")
