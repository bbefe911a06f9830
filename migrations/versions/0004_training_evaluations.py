"""Evaluation points, verdicts, pause/resume and kept checkpoints (issue 8).

Reserved so that migrations developed in parallel chain in a fixed order; filled in by
the change that needs it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
