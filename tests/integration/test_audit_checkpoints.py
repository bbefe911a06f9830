"""Signed checkpoints of each tenant's audit chain head, on SQLite and Postgres: a chain
rewritten and re-hashed consistently before a checkpoint passes the plain chain check
and fails the checkpoint's; an altered checkpoint fails its signature. Entries made
here belong to the ``default`` tenant (nothing bound, no owner found)."""

from __future__ import annotations

import base64
import json
from contextlib import contextmanager

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from api.services import certificates as certificate_service
from core.audit_checkpoints import (
    checkpoint_now,
    public_keys_of,
    sign_checkpoint,
    verify_log,
)
from core.certificates import key_id_of, public_key_document
from core.db.audit import add_audit_entry, entry_hash, verify_chain
from core.db.tables import AuditCheckpoint, AuditEntry, AuditHead
from core.db.types import utcnow
from core.reaper import ReaperThread


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


TENANT = "default"


def add_entries(session, count: int, start: int = 0, tenant: str = TENANT) -> list[int]:
    """``count`` entries of ``tenant``; the ids of all its entries."""
    for number in range(start, start + count):
        add_audit_entry(
            session,
            principal="anonymous",
            action="dataset.created",
            object_type="dataset",
            object_id=f"ds_01aaaaaaaaaaaaaaaaaaaaaa{number:02d}",
            data={"sha256": str(number % 10) * 64},
            tenant=tenant,
        )
        session.commit()
    return list(
        session.scalars(
            select(AuditEntry.id).where(AuditEntry.tenant_id == tenant).order_by(AuditEntry.id)
        )
    )


@contextmanager
def triggers_lifted(session, table: str):
    """What someone with the database's owner rights can do: lift a table's
    append-only triggers, rewrite it, put them back."""
    sqlite = session.bind.dialect.name == "sqlite"
    if sqlite:
        for operation in ("UPDATE", "DELETE"):
            session.execute(text(f"DROP TRIGGER {table}_no_{operation}"))
    else:
        session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"))
    try:
        yield
        session.commit()
    finally:
        if sqlite:
            for operation in ("UPDATE", "DELETE"):
                session.execute(
                    text(
                        f"CREATE TRIGGER {table}_no_{operation} BEFORE {operation} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                    )
                )
        else:
            session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only"))
        session.commit()


def rewrite_and_rehash(session, entry_id: int, principal: str, tenant: str = TENANT) -> None:
    """Edit one entry, then recompute every hash of its tenant's chain and the head: the
    plain chain check cannot tell."""
    with triggers_lifted(session, "audit_log"):
        session.execute(
            text("UPDATE audit_log SET principal = :p WHERE id = :i"),
            {"p": principal, "i": entry_id},
        )
        prev = "0" * 64
        table = AuditEntry.__table__
        rows = session.execute(
            select(table).where(table.c.tenant_id == tenant).order_by(table.c.id)
        ).all()
        for row in rows:
            digest = entry_hash(
                prev,
                tenant=tenant,
                at=row.at,
                principal=row.principal,
                action=row.action,
                object_type=row.object_type,
                object_id=row.object_id,
                data=row.data,
            )
            session.execute(
                text("UPDATE audit_log SET prev_hash = :p, entry_hash = :h WHERE id = :i"),
                {"p": prev, "h": digest, "i": row.id},
            )
            prev = digest
        session.execute(
            text("UPDATE audit_head SET head_hash = :h WHERE tenant_id = :t"),
            {"h": prev, "t": tenant},
        )


def test_a_checkpoint_is_signed_once_per_head_and_verifies(db_session, key):
    session = db_session
    assert sign_checkpoint(session, key, utcnow(), TENANT) is None  # an empty log: nothing to sign
    add_entries(session, 4)
    head = session.scalars(select(AuditHead)).one()
    now = utcnow()
    checkpoint = sign_checkpoint(session, key, now, TENANT)
    session.commit()
    assert (checkpoint.entries, checkpoint.head_hash) == (4, head.head_hash)
    assert checkpoint.key_id == key_id_of(key.public_key())
    # The signature checks out by the documented rule, not by the code under test.
    session.expire_all()  # read back what the database holds
    stored = session.get(AuditCheckpoint, checkpoint.id)
    message = json.dumps(
        {"at": stored.at.isoformat(), "entries": 4, "head_hash": head.head_hash, "tenant": TENANT},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert stored.at == now
    key.public_key().verify(base64.b64decode(stored.signature), message)

    # The head did not move: no new checkpoint.
    assert sign_checkpoint(session, key, utcnow(), TENANT) is None
    session.commit()
    assert session.query(AuditCheckpoint).count() == 1

    add_entries(session, 2, start=4)
    second = sign_checkpoint(session, key, utcnow(), TENANT)
    session.commit()
    assert second.entries == 6 and second.id > checkpoint.id

    result = verify_log(session, public_keys_of(key.public_key()), tenant=TENANT)
    assert (result.valid, result.entries, result.checkpoints) == (True, 6, 2), result
    assert result.checkpoint_id is None and result.problem is None


def test_a_rewritten_and_rehashed_chain_fails_at_the_checkpoint(db_session, key):
    session = db_session
    add_entries(session, 2)
    first = sign_checkpoint(session, key, utcnow(), TENANT)  # at entry 2
    session.commit()
    add_entries(session, 2, start=2)
    second = sign_checkpoint(session, key, utcnow(), TENANT)  # at entry 4
    session.commit()
    ids = add_entries(session, 1, start=4)  # entry 5: after every checkpoint

    rewrite_and_rehash(session, ids[2], "someone-else")  # the third entry: after `first`
    assert verify_chain(session, TENANT).valid  # the plain chain check is fooled
    result = verify_log(session, public_keys_of(key.public_key()), tenant=TENANT)
    assert result.valid is False
    assert (result.checkpoint_id, result.checkpoints, result.entry_id) == (second.id, 1, None)
    assert f"checkpoint {second.id}" in result.problem and "rewritten" in result.problem

    rewrite_and_rehash(session, ids[0], "someone-else")  # now before the first one too
    result = verify_log(session, public_keys_of(key.public_key()), tenant=TENANT)
    assert (result.valid, result.checkpoint_id, result.checkpoints) == (False, first.id, 0)


def test_entries_removed_after_a_checkpoint_with_the_head_fixed_are_caught(db_session, key):
    session = db_session
    ids = add_entries(session, 3)
    checkpoint = sign_checkpoint(session, key, utcnow(), TENANT)
    session.commit()
    second_hash = session.get(AuditEntry, ids[1]).entry_hash
    with triggers_lifted(session, "audit_log"):
        session.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": ids[2]})
        session.execute(
            text("UPDATE audit_head SET entries = 2, head_hash = :h WHERE tenant_id = 'default'"),
            {"h": second_hash},
        )
    assert verify_chain(session, TENANT).valid
    result = verify_log(session, public_keys_of(key.public_key()), tenant=TENANT)
    assert (result.valid, result.checkpoint_id) == (False, checkpoint.id)
    assert "removed after it was signed" in result.problem
    # Nor is the shortened head signed over the checkpoint.
    assert sign_checkpoint(session, key, utcnow(), TENANT) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("entries = entries + 1", "altered after it was signed"),
        ("head_hash = '" + "a" * 64 + "'", "altered after it was signed"),
        ("signature = 'not base64!'", "altered after it was signed"),
        ("key_id = 'ffffffffffffffff'", "not a trusted key"),
    ],
)
def test_an_altered_checkpoint_fails_its_signature(db_session, key, change, problem):
    session = db_session
    add_entries(session, 2)
    checkpoint = sign_checkpoint(session, key, utcnow(), TENANT)
    session.commit()
    with triggers_lifted(session, "audit_checkpoints"):
        session.execute(text(f"UPDATE audit_checkpoints SET {change}"))
    result = verify_log(session, public_keys_of(key.public_key()), tenant=TENANT)
    assert (result.valid, result.checkpoint_id) == (False, checkpoint.id)
    assert problem in result.problem


def test_a_checkpoint_by_another_key_is_not_trusted(db_session, key):
    session = db_session
    add_entries(session, 1)
    sign_checkpoint(session, Ed25519PrivateKey.generate(), utcnow(), TENANT)
    session.commit()
    result = verify_log(session, public_keys_of(key.public_key()), tenant=TENANT)
    assert result.valid is False and "not a trusted key" in result.problem


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_checkpoints SET entries = 9", "DELETE FROM audit_checkpoints"]
)
def test_the_database_refuses_to_change_or_remove_checkpoints(db_session, key, statement):
    add_entries(db_session, 1)
    sign_checkpoint(db_session, key, utcnow(), TENANT)
    db_session.commit()
    with pytest.raises(DBAPIError, match="audit_checkpoints is append-only"):
        db_session.execute(text(statement))
    db_session.rollback()


def test_the_reaper_signs_at_most_once_an_interval_and_only_a_moved_head(
    session_factory, api_settings, monkeypatch
):
    settings = api_settings
    assert settings.audit_checkpoint_interval_s == 3600.0
    reaper = ReaperThread(session_factory, None, settings)
    with session_factory() as session:
        add_entries(session, 2)
        add_entries(session, 1, tenant="acme")
    acme, first = reaper.checkpoint_if_due()  # one per tenant, in tenant order
    with session_factory() as session:
        add_entries(session, 1, start=2)
    assert reaper.checkpoint_if_due() == []  # not due yet
    reaper.next_checkpoint = 0.0
    [second] = reaper.checkpoint_if_due()  # acme's head did not move
    reaper.next_checkpoint = 0.0
    assert reaper.checkpoint_if_due() == []  # due, but no head moved
    # Signed with the service's key, the one the well-known endpoint serves.
    with session_factory() as session:
        rows = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).all()
        public = certificate_service.signing_key(settings.signing_key_file).public_key()
        assert [(r.id, r.tenant_id, r.entries, r.key_id) for r in rows] == [
            (acme, "acme", 1, key_id_of(public)),
            (first, TENANT, 2, key_id_of(public)),
            (second, TENANT, 3, key_id_of(public)),
        ]
    # A replica finding the head signed already by another signs nothing.
    with session_factory() as session:
        add_entries(session, 1, start=3)
    key = certificate_service.signing_key(settings.signing_key_file)
    now = utcnow()
    with session_factory() as one, session_factory() as other:
        assert sign_checkpoint(one, key, now, TENANT) is not None
        one.commit()
        assert sign_checkpoint(other, key, now, TENANT) is None
    assert checkpoint_now(session_factory, key, now) == []


def test_the_api_lists_checkpoints_and_verifies_them(client, api_settings, session_factory):
    key = certificate_service.signing_key(api_settings.signing_key_file)
    with session_factory() as session:
        ids = add_entries(session, 2)
        for start in range(2, 5):
            sign_checkpoint(session, key, utcnow(), TENANT)
            session.commit()
            add_entries(session, 1, start=start)
    check = client.get("/v1/audit/verify").json()
    assert check["valid"] is True and (check["entries"], check["checkpoints"]) == (5, 3)
    assert check["tenant"] == TENANT

    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after is not None else {})
        page = client.get("/v1/audit/checkpoints", params=params)
        assert page.status_code == 200, page.text
        page = page.json()
        seen += page["data"]
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert [(c["tenant"], c["entries"]) for c in seen] == [(TENANT, 2), (TENANT, 3), (TENANT, 4)]
    served = client.get("/.well-known/obliviate/signing-key").json()
    assert all(c["object"] == "audit_checkpoint" and c["algorithm"] == "Ed25519" for c in seen)
    assert {c["key_id"] for c in seen} == {served["key_id"]}
    assert client.get("/v1/audit/checkpoints", params={"after": -1}).status_code == 422

    with session_factory() as session:
        rewrite_and_rehash(session, ids[0], "someone-else")
    check = client.get("/v1/audit/verify").json()
    assert check["valid"] is False and check["checkpoint_id"] == seen[0]["id"]
    assert check["checkpoints"] == 0 and "rewritten" in check["problem"]


def run_cli(monkeypatch, session_factory, *args):
    from cli.main import app as cli
    from core.settings import get_settings

    monkeypatch.setenv(
        "OBLIVIATE_DATABASE_URL",
        str(session_factory.kw["bind"].url.render_as_string(hide_password=False)),
    )
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, ["audit", "verify", *args])
    finally:
        get_settings.cache_clear()


def test_the_cli_checks_checkpoints_and_copies_kept_outside(
    session_factory, key, tmp_path, monkeypatch
):
    monkeypatch.setenv("OBLIVIATE_SIGNING_KEY_FILE", str(tmp_path / "absent.pem"))
    with session_factory() as session:
        ids = add_entries(session, 3)
        checkpoint = sign_checkpoint(session, key, utcnow(), TENANT)
        session.commit()
        kept = [
            {
                "id": checkpoint.id,
                "tenant": checkpoint.tenant_id,
                "at": checkpoint.at.isoformat(),
                "entries": checkpoint.entries,
                "head_hash": checkpoint.head_hash,
                "key_id": checkpoint.key_id,
                "signature": checkpoint.signature,
            }
        ]
    public = tmp_path / "signing-key.json"
    public.write_text(json.dumps(public_key_document(key.public_key())))
    copies = tmp_path / "checkpoints.json"
    copies.write_text(json.dumps({"data": kept}))

    result = run_cli(monkeypatch, session_factory, "--public-key", str(public))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps lines
    assert "OK tenant default: 3 audit entries" in output and "1 signed checkpoints" in output
    # Without a trusted key (none given, none on this machine) a checkpoint cannot hold.
    result = run_cli(monkeypatch, session_factory)
    assert result.exit_code == 1, result.output
    assert "not a trusted key" in " ".join(result.output.split())

    # Whoever rewrites the chain deletes the checkpoints too: the kept copy catches it.
    with session_factory() as session:
        rewrite_and_rehash(session, ids[1], "someone-else")
        with triggers_lifted(session, "audit_checkpoints"):
            session.execute(text("DELETE FROM audit_checkpoints"))
    result = run_cli(monkeypatch, session_factory, "--public-key", str(public))
    assert result.exit_code == 0, result.output  # nothing left in the database to catch it
    result = run_cli(
        monkeypatch,
        session_factory,
        "--public-key",
        str(public),
        "--checkpoints",
        str(copies),
        "--json",
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    [chain] = report["chains"]
    assert (report["valid"], chain["tenant"], chain["checkpoint_id"]) == (
        False,
        TENANT,
        checkpoint.id,
    )
    assert "rewritten" in chain["problem"]
    result = run_cli(
        monkeypatch, session_factory, "--public-key", str(public), "--checkpoints", str(copies)
    )
    assert (
        f"FAILED tenant default: after 3 good entries and 0 good checkpoints, checkpoint "
        f"{checkpoint.id}"
    ) in (" ".join(result.output.split()))


def test_legacy_checkpoints_check_the_service_wide_chain(db_session, key):
    """A checkpoint signed before migration 0013 (tenant null, over {at, entries,
    head_hash} of the one chain of every tenant's entries): kept, it still catches an
    entry rewritten before it, even with the tenant's chain re-hashed consistently."""
    from core.audit_checkpoints import KeptCheckpoint, verify_every_tenant
    from core.db.audit_legacy import legacy_entry_hash

    session = db_session
    add_entries(session, 2)
    add_entries(session, 1, start=2, tenant="acme")
    prev = "0" * 64
    for row in session.execute(select(AuditEntry.__table__).order_by(AuditEntry.id)).all():
        prev = legacy_entry_hash(
            prev,
            at=row.at,
            principal=row.principal,
            action=row.action,
            object_type=row.object_type,
            object_id=row.object_id,
            data=row.data,
        )
    at = utcnow()
    message = json.dumps(
        {"at": at.isoformat(), "entries": 3, "head_hash": prev},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    legacy = AuditCheckpoint(
        tenant_id=None,
        at=at,
        entries=3,
        head_hash=prev,
        key_id=key_id_of(key.public_key()),
        signature=base64.b64encode(key.sign(message)).decode(),
    )
    session.add(legacy)
    session.commit()
    keys = public_keys_of(key.public_key())
    checks = verify_every_tenant(session, keys)
    assert [(c.tenant, c.valid, c.checkpoints) for c in checks] == [
        ("acme", True, 0),
        (TENANT, True, 0),
        (None, True, 1),
    ]
    kept = KeptCheckpoint.from_json(
        {
            "id": legacy.id,
            "at": at.isoformat(),
            "entries": 3,
            "head_hash": prev,
            "key_id": legacy.key_id,
            "signature": legacy.signature,
        }
    )
    assert kept.tenant_id is None  # a copy without a tenant is a legacy one

    ids = session.scalars(select(AuditEntry.id).order_by(AuditEntry.id)).all()
    rewrite_and_rehash(session, ids[0], "someone-else")
    with triggers_lifted(session, "audit_checkpoints"):
        session.execute(text("DELETE FROM audit_checkpoints"))
    checks = verify_every_tenant(session, keys, [kept])
    assert [(c.tenant, c.valid) for c in checks] == [("acme", True), (TENANT, True), (None, False)]
    assert checks[-1].checkpoint_id == legacy.id and "rewritten" in checks[-1].problem
