"""The migrations are the schema: they build it, tear it down, and match the ORM."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from core.db.engine import make_engine
from core.db.migrate import current_revision, downgrade, upgrade
from core.db.tables import Base
from core.db.types import JSONDoc, UTCDateTime


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


def _documented_hash(prev_hash: str, content: dict) -> str:
    """The audit chain's rule as README documents it, computed here, not by the code
    under test."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


AUDIT_LOG = sa.table(
    "audit_log",
    sa.column("id"),
    sa.column("tenant_id"),
    sa.column("at", UTCDateTime),
    sa.column("principal"),
    sa.column("action"),
    sa.column("object_type"),
    sa.column("object_id"),
    sa.column("data", JSONDoc),
    sa.column("prev_hash"),
    sa.column("entry_hash"),
)


def test_0013_turns_the_global_chain_into_one_chain_per_tenant_and_back(empty_database_url):
    """A database at 0012 holding a service-wide chain of two tenants' entries and a
    checkpoint of it: upgraded, each tenant has a valid chain and head, the old
    checkpoint is kept as a legacy one that still verifies, the triggers are back;
    downgraded, the entries have their old hashes again."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.audit_checkpoints import public_keys_of, verify_every_tenant, verify_log
    from core.certificates import canonical_json, key_id_of
    from core.db.audit import add_audit_entry
    from core.db.engine import make_session_factory

    url = empty_database_url
    upgrade(url, "0012")
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    rows, prev = [], "0" * 64
    for number in range(6):
        fields = {
            "at": start + timedelta(seconds=number),
            "principal": "anonymous",
            "action": "dataset.created",
            "object_type": "dataset",
            "object_id": f"ds_01aaaaaaaaaaaaaaaaaaaaaa{number:02d}",
            "data": {"sha256": str(number) * 64},
        }
        digest = _documented_hash(prev, {**fields, "at": fields["at"].isoformat()})
        rows.append(
            {
                **fields,
                "tenant_id": ("acme", "globex")[number % 2],
                "prev_hash": prev,
                "entry_hash": digest,
            }
        )
        prev = digest
    global_hashes = [row["entry_hash"] for row in rows]
    key = Ed25519PrivateKey.generate()
    signed_at = start + timedelta(minutes=5)
    legacy = {"at": signed_at, "entries": 4, "head_hash": global_hashes[3]}
    signature = key.sign(canonical_json({**legacy, "at": signed_at.isoformat()}))
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            connection.execute(AUDIT_LOG.insert(), rows)
            connection.execute(text("DELETE FROM audit_head"))
            connection.execute(
                text("INSERT INTO audit_head (id, entries, head_hash) VALUES (1, 6, :h)"),
                {"h": prev},
            )
            checkpoints = sa.table(
                "audit_checkpoints",
                sa.column("at", UTCDateTime),
                *(sa.column(name) for name in ("entries", "head_hash", "key_id", "signature")),
            )
            connection.execute(
                checkpoints.insert().values(
                    **legacy,
                    key_id=key_id_of(key.public_key()),
                    signature=base64.b64encode(signature).decode(),
                )
            )

        upgrade(url)
        keys = public_keys_of(key.public_key())
        with make_session_factory(engine)() as session:
            heads = dict(session.execute(text("SELECT tenant_id, entries FROM audit_head")).all())
            assert heads == {"acme": 3, "globex": 3}
            checks = verify_every_tenant(session, keys)
            assert [(c.tenant, c.valid, c.entries, c.checkpoints) for c in checks] == [
                ("acme", True, 3, 0),
                ("globex", True, 3, 0),
                (None, True, 4, 1),  # the legacy checkpoint, on the chain it signed
            ], checks
            first_globex = session.execute(
                sa.select(AUDIT_LOG).order_by(AUDIT_LOG.c.id).offset(1).limit(1)
            ).one()
            content = {key: rows[1][key] for key in ("principal", "action", "object_type")}
            content |= {
                "tenant": "globex",
                "at": rows[1]["at"].isoformat(),
                "object_id": rows[1]["object_id"],
                "data": rows[1]["data"],
            }
            assert (first_globex.prev_hash, first_globex.entry_hash) == (
                "0" * 64,
                _documented_hash("0" * 64, content),
            )
            for statement in (
                "UPDATE audit_log SET principal = 'x'",
                "DELETE FROM audit_log",
                "UPDATE audit_checkpoints SET entries = 1",
            ):
                with pytest.raises(DBAPIError, match="append-only"):
                    session.execute(text(statement))
                session.rollback()
            # The chains go on from the converted heads; a new tenant starts its own.
            for tenant in ("acme", "initech"):
                add_audit_entry(
                    session,
                    principal="p",
                    action="job.submitted",
                    object_type="job",
                    object_id="job_x",
                    tenant=tenant,
                )
            session.commit()
            assert verify_log(session, keys, tenant="acme").entries == 4
            assert verify_log(session, keys, tenant="initech").valid

        downgrade(url, "0012")
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT entry_hash FROM audit_log ORDER BY id")
            ).scalars()
            assert list(stored)[:6] == global_hashes  # the legacy checkpoint holds again
            head = connection.execute(text("SELECT id, entries FROM audit_head")).one()
            assert tuple(head) == (1, 8)
            assert connection.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar() == 1
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text("DELETE FROM audit_log"))

        upgrade(url)
        with make_session_factory(engine)() as session:
            checks = verify_every_tenant(session, keys)
            assert [(c.tenant, c.valid, c.entries) for c in checks] == [
                ("acme", True, 4),
                ("globex", True, 3),
                ("initech", True, 1),
                (None, True, 4),
            ], checks
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
