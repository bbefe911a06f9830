"""Dataset encryption and crypto-shredding (issue 9, part 3): ``datasets.wrapped_key``
(the dataset's data key, encrypted by the master key; NULL for files stored before
encryption, which stay readable as plain) and ``datasets.shredded_at``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.db.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("wrapped_key", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("shredded_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    # Dropping the column would destroy every dataset's key: refuse while any is set.
    encrypted = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM datasets WHERE wrapped_key IS NOT NULL")
    )
    if encrypted:
        raise RuntimeError(
            f"{encrypted} dataset(s) are encrypted; downgrading below 0009 would drop "
            "their keys and with them the data. Shred or re-upload them first."
        )
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("shredded_at")
        batch.drop_column("wrapped_key")
