"""Per-process resources of a worker: database sessions and the object store, created
once, on first use."""

from __future__ import annotations

from functools import lru_cache

from core.db import make_engine, make_session_factory
from core.settings import get_settings
from core.storage import store_from_settings


@lru_cache
def session_factory():
    # pre_ping: a job runs for hours, and the database may restart or drop connections
    # meanwhile; one round trip per checkout is nothing beside a 2 s heartbeat.
    return make_session_factory(
        make_engine(get_settings().database_url, pool_size=2, pre_ping=True)
    )


@lru_cache
def object_store():
    return store_from_settings(get_settings())
