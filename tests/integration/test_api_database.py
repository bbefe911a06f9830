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


def _terminate_other_connections(database_url: str) -> int:
    """pg_terminate_backend every other connection to the test database: what a
    failover, a restart or an administrator does to the API's pooled connections."""
    import psycopg

    from tests.fixtures.services import POSTGRES_ADMIN_URL

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()[0]


def test_the_api_answers_after_its_pooled_connections_were_terminated(
    client, session_factory, database_url
):
    """The first request after the drop used to be a 500 (OperationalError: terminating
    connection). Reads retry once on a fresh connection; writes ping at checkout."""
    if not database_url.startswith("postgresql"):
        pytest.skip("pg_terminate_backend is Postgres's")
    from tests.fixtures.api import job_body, register_model, upload_dataset

    register_model(client)
    forget = upload_dataset(client)
    job_id = client.post("/v1/jobs", json=job_body(forget)).json()["id"]
    for _ in range(3):  # every pooled connection of both engines in use at least once
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get("/v1/jobs").status_code == 200

    for round_ in range(3):
        assert _terminate_other_connections(database_url) >= 1
        read = client.get(f"/v1/jobs/{job_id}")
        assert read.status_code == 200, (round_, read.text)
        assert client.get("/v1/jobs").status_code == 200
        written = client.post("/v1/jobs", json=job_body(forget))
        assert written.status_code == 201, (round_, written.text)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202


def test_a_pooled_connection_left_mid_transaction_is_replaced_at_checkout(postgres_url):
    """A connection terminated mid-statement can go back to the pool still reading as
    open, with a transaction in progress: psycopg then refuses the ping's switch to
    autocommit with a ProgrammingError. The pre-ping must replace the connection, not
    hand that error to a training job (a fault-suite run failed a job this way)."""
    from sqlalchemy import event

    engine = make_engine(postgres_url, pool_size=1, pre_ping=True)
    leave_mid_transaction = {"armed": True}

    @event.listens_for(engine.pool, "checkin")
    def _begin_behind_the_pool(dbapi_connection, _record):
        # After the pool's own reset: what a connection caught mid-statement looks like.
        if dbapi_connection is not None and leave_mid_transaction.pop("armed", False):
            dbapi_connection.execute("SELECT 1")

    try:
        with engine.connect() as connection:
            first = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as connection:
            second = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert second != first  # the ping discarded the connection and opened another
    finally:
        engine.dispose()
