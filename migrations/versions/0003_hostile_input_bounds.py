"""64-bit cursor ids and other bounds for hostile input (issue 14).

Reserved so that migrations developed in parallel chain in a fixed order; filled in by
the change that needs it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
