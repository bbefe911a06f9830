"""What the app opens once at start-up and shares between requests."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine

from api.database import Database
from core.db.engine import make_engine, make_session_factory
from core.queue import make_celery
from core.settings import Settings
from core.storage import ObjectStore, store_from_settings

# Connections (and database threads) per process. Reads get more: they are most of the
# traffic. Requests beyond them queue for a thread (see api.database).
READ_POOL_SIZE = 8
WRITE_POOL_SIZE = 6


@dataclass
class Resources:
    engine: Engine
    read_engine: Engine
    database: Database
    read_database: Database
    store: ObjectStore
    celery: Celery

    @classmethod
    def open(cls, settings: Settings) -> Resources:
        # Stale connections (a database restart or failover, pg_terminate_backend): writes
        # ping at checkout, since a failed write is not always safe to repeat; reads
        # retry once instead, which costs nothing on the hot path (api.database).
        engine = make_engine(settings.database_url, pool_size=WRITE_POOL_SIZE, pre_ping=True)
        read_engine = make_engine(settings.database_url, pool_size=READ_POOL_SIZE, autocommit=True)
        return cls(
            engine=engine,
            read_engine=read_engine,
            database=Database(
                make_session_factory(engine), threads=WRITE_POOL_SIZE, name="db-write"
            ),
            read_database=Database(
                make_session_factory(read_engine),
                threads=READ_POOL_SIZE,
                name="db-read",
                retry_disconnects=True,
            ),
            store=store_from_settings(settings),
            celery=make_celery(settings),
        )

    def close(self) -> None:
        self.database.close()
        self.read_database.close()
        self.celery.close()
        self.engine.dispose()
        self.read_engine.dispose()
