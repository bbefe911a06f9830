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


def _head() -> str:
    from alembic.script import ScriptDirectory

    from core.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


HEAD = _head()


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


def test_0002_keeps_existing_rows_both_ways(empty_database_url):
    """On SQLite 0002 rebuilds the jobs table, which other tables' rows reference: it
    must keep every row, up and down."""
    upgrade(empty_database_url, "0001")
    now = "2025-01-01 00:00:00"
    rows = [
        "INSERT INTO datasets VALUES ('ds_1', 'f', 'f.jsonl', 'jsonl', 'qa', 1, 1, :sha, 'k',"
        " '[]', false, :now)",
        "INSERT INTO jobs (id, status, method, model, forget_dataset_id, spec, hyperparameters,"
        " seed, metadata, created_at, updated_at, attempts, step, epoch, trained_tokens)"
        " VALUES ('job_1', 'queued', 'npo', 'm', 'ds_1', '{}', '{}', 0, '{}', :now, :now, 0, 0,"
        " 0, 0)",
        "INSERT INTO job_events (job_id, created_at, level, type, message)"
        " VALUES ('job_1', :now, 'info', 'status', 'queued')",
        "INSERT INTO idempotency_keys VALUES ('anonymous', 'k', :sha, 'job_1', :now)",
    ]
    engine = make_engine(empty_database_url, pool_size=1)
    try:
        with engine.begin() as connection:
            for statement in rows:
                connection.execute(text(statement), {"sha": "0" * 64, "now": now})

        def counts() -> tuple:
            with engine.connect() as connection:
                return tuple(
                    connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                    for table in ("datasets", "jobs", "job_events", "idempotency_keys")
                )

        upgrade(empty_database_url)
        assert counts() == (1, 1, 1, 1)
        with engine.connect() as connection:
            link = connection.execute(text("SELECT deletion_request_id FROM jobs")).scalar()
            assert link is None
        downgrade(empty_database_url, "0001")
        assert current_revision(empty_database_url) == "0001"
        assert counts() == (1, 1, 1, 1)
        upgrade(empty_database_url)
        assert counts() == (1, 1, 1, 1)
    finally:
        engine.dispose()


def test_0014_links_every_job_to_the_request_it_served(empty_database_url):
    """Status derivation reads job_deletion_requests from 0014 on: every job linked by
    jobs.deletion_request_id before it is linked there too, with the job's tenant."""
    upgrade(empty_database_url, "0012")
    now = "2025-01-01 00:00:00"
    rows = [
        "INSERT INTO datasets (id, name, filename, format, kind, record_count, size_bytes,"
        " sha256, storage_key, columns, has_truth_ratio_fields, created_at)"
        " VALUES ('ds_1', 'f', 'f.jsonl', 'jsonl', 'qa', 1, 1, :sha, 'k', '[]', false, :now)",
        "INSERT INTO deletion_requests (id, tenant_id, subject, metadata, created_at)"
        " VALUES ('dr_1', 'acme', 's', '{}', :now)",
    ] + [
        "INSERT INTO jobs (id, tenant_id, status, method, model, forget_dataset_id, spec,"
        " hyperparameters, seed, metadata, created_at, updated_at, attempts, step, epoch,"
        f" trained_tokens, deletion_request_id) VALUES ('{job}', 'acme', 'queued', 'npo', 'm',"
        f" 'ds_1', '{{}}', '{{}}', 0, '{{}}', :now, :now, 0, 0, 0, 0, {request})"
        for job, request in (("job_1", "'dr_1'"), ("job_2", "NULL"))
    ]
    engine = make_engine(empty_database_url, pool_size=1)
    try:
        with engine.begin() as connection:
            for statement in rows:
                connection.execute(text(statement), {"sha": "0" * 64, "now": now})
        upgrade(empty_database_url)
        with engine.connect() as connection:
            links = connection.execute(
                text(
                    "SELECT job_id, deletion_request_id, tenant_id, records_verdict"
                    " FROM job_deletion_requests"
                )
            ).all()
        assert [tuple(link) for link in links] == [("job_1", "dr_1", "acme", None)]
        downgrade(empty_database_url, "0012")
        upgrade(empty_database_url)
    finally:
        engine.dispose()
