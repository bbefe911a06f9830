"""Deletion-request certificates, batching, dataset keys for crypto-shredding (issue 9, part 2).

Reserved so that migrations developed in parallel chain in a fixed order; filled in by
the change that needs it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
