"""api.database.Database: many more requests than connections never deadlock, and work a
service did not commit is rolled back."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text

from api.database import Database
from core.db.engine import make_engine, make_session_factory
from core.db.tables import Dataset
from tests.fixtures.api import make_dataset


@pytest.fixture
def small_database(database_url):
    engine = make_engine(database_url, pool_size=2)
    database = Database(make_session_factory(engine), threads=2, name="test-db")
    yield database
    database.close()
    engine.dispose()


def test_more_requests_than_connections_all_complete(small_database):
    def query(session, value: int) -> int:
        return session.execute(text("SELECT :value"), {"value": value}).scalar_one()

    async def many() -> list[int]:
        calls = [small_database.run(query, i) for i in range(60)]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=30)

    assert asyncio.run(many()) == list(range(60))


def test_uncommitted_work_is_rolled_back(small_database):
    def add_and_fail(session) -> None:
        make_dataset(session)
        raise RuntimeError("service failed before committing")

    def count(session) -> int:
        return session.scalar(select(func.count()).select_from(Dataset))

    async def scenario() -> int:
        with pytest.raises(RuntimeError):
            await small_database.run(add_and_fail)
        return await small_database.run(count)

    assert asyncio.run(scenario()) == 0
