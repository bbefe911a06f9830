"""Tenants, API keys, roles, audit hash chain, certificates, webhooks, dataset keys (issue 9).

Reserved so that migrations developed in parallel chain in a fixed order; filled in by
the change that needs it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
