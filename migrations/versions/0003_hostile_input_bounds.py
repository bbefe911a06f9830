"""64-bit ids for job events and metrics (issue 14).

``job_events.id`` and ``job_metrics.id`` were 32-bit ``SERIAL`` columns on Postgres: a
busy service runs out of them (every step writes a metric row), and a cursor above
2^31 - 1 reached the database as a value the column cannot hold (a 500). They become
``BIGINT`` with ``bigint`` sequences, like ``audit_log.id``.

SQLite needs nothing, and gets no batch rebuild: an ``INTEGER PRIMARY KEY`` column is
the table's rowid there, which is already a 64-bit integer (the ORM's ``BigSerial``
renders as ``INTEGER`` on SQLite for exactly that reason).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("job_events", "job_metrics")


def _set_id_type(sql_type: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id TYPE {sql_type}")
        # The sequence has a type of its own since Postgres 10 (SERIAL made it
        # ``AS integer``, maximum 2^31 - 1); changing the type moves the default maximum.
        sequence = op.get_bind().scalar(
            sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table}
        )
        op.execute(f"ALTER SEQUENCE {sequence} AS {sql_type}")


def upgrade() -> None:
    _set_id_type("BIGINT")


def downgrade() -> None:
    # Fails, as it should, once an id no longer fits in 32 bits.
    _set_id_type("INTEGER")
