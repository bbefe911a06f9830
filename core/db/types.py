"""Column types that behave the same on SQLite and Postgres."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String
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

#: Prefixed ids compare bytewise on Postgres whatever the database's collation, so
#: ``ORDER BY id`` is creation order everywhere.
IdString = String(40).with_variant(String(40, collation="C"), "postgresql")

#: A 64-bit auto-incrementing primary key: BIGSERIAL on Postgres; on SQLite INTEGER,
#: since only an ``INTEGER PRIMARY KEY`` becomes the (64-bit) rowid there.
BigSerial = BigInteger().with_variant(Integer(), "sqlite")
