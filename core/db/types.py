"""Column types that behave the same on SQLite and Postgres."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, Integer, SmallInteger, String
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python, ``timestamptz`` on Postgres.

    SQLite has no time zones: values are stored as naive UTC text (which sorts
    chronologically) and come back aware, so callers never mix naive and aware times.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return (
            value.replace(tzinfo=timezone.utc)
            if value.tzinfo is None
            else value.astimezone(timezone.utc)
        )


#: JSON documents; JSONB on Postgres (smaller, and indexable should filters need it).
JSONDoc = JSON().with_variant(postgresql.JSONB(), "postgresql")

#: The longest id a string id column holds.
ID_MAX_LENGTH = 40

#: Prefixed ids compare bytewise on Postgres whatever the database's collation, so
#: ``ORDER BY id`` is creation order everywhere.
IdString = String(ID_MAX_LENGTH).with_variant(String(ID_MAX_LENGTH, collation="C"), "postgresql")

#: A 64-bit auto-incrementing primary key: BIGSERIAL on Postgres; on SQLite INTEGER,
#: since only an ``INTEGER PRIMARY KEY`` becomes the (64-bit) rowid there.
BigSerial = BigInteger().with_variant(Integer(), "sqlite")


def integer_range(column) -> tuple[int, int]:
    """The values an integer column holds on every database we run on: Postgres's
    ``smallint``/``integer``/``bigint`` ranges (SQLite's integers are all 64-bit, so
    Postgres is the narrower of the two). Cursors that compare with the column are
    bounded by it, so a value the database cannot hold is a 422, not a 500."""
    column_type = column.type
    # BigSerial is BigInteger with an Integer variant for SQLite: the base type counts.
    for kind, bits in ((BigInteger, 64), (SmallInteger, 16), (Integer, 32)):
        if isinstance(column_type, kind):
            return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    raise TypeError(f"{column} is not an integer column")
