"""Evaluation points and verdicts, pause and resume, and job kinds (issue 8).

- ``job_evaluations``: one row per evaluation point of a training run (the probe's
  figures, the verdict, the checkpoint kept for it);
- ``jobs.kind`` (``unlearn`` or ``finetune``), ``jobs.verdict`` (the published point's
  verdict, set when the job ends), ``jobs.pause_requested_at`` and ``jobs.resumes``
  (resumes after a pause are attempts too, but not failures the reaper counts).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import BigSerial, IdString, JSONDoc, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_evaluations",
        sa.Column("id", BigSerial, autoincrement=True, nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Float, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("metrics", JSONDoc, nullable=False),
        sa.Column("verdict", JSONDoc, nullable=True),
        sa.Column("checkpoint", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_evaluations_job_id"),
        sa.PrimaryKeyConstraint("id", name="pk_job_evaluations"),
    )
    op.create_index("ix_job_evaluations_job_id_step", "job_evaluations", ["job_id", "step"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="unlearn"))
        batch.add_column(sa.Column("verdict", JSONDoc, nullable=True))
        batch.add_column(sa.Column("pause_requested_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("resumes", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resumes")
        batch.drop_column("pause_requested_at")
        batch.drop_column("verdict")
        batch.drop_column("kind")
    op.drop_index("ix_job_evaluations_job_id_step", table_name="job_evaluations")
    op.drop_table("job_evaluations")
