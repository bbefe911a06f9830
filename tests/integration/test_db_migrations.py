"""The migrations are the schema: they build it, tear it down, and match the ORM."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from core.db.engine import make_engine
from core.db.migrate import current_revision, downgrade, upgrade
from core.db.tables import Base

HEAD = "0001"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path):
    """A database with no tables: a new SQLite file, or on Postgres a new schema (first on
    the search path) in the session's database, cheaper than a database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url, engine = request.getfixturevalue("migrated_postgres")
    schema = f"migrate_{uuid.uuid4().hex[:10]}"
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{url}?options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def table_names(url: str) -> set[str]:
    engine = make_engine(url, pool_size=1)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_then_downgrade_to_base_and_back(empty_database_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the migrations are found through the package, not the cwd
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == HEAD
    assert table_names(empty_database_url) == set(Base.metadata.tables)

    upgrade(empty_database_url)  # at head already: a no-op
    downgrade(empty_database_url, "base")
    assert current_revision(empty_database_url) is None
    assert table_names(empty_database_url) == set()

    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == HEAD


def test_migrated_schema_matches_the_orm_models(database_url):
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
