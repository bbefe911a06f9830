"""One audit hash chain per tenant, on SQLite and Postgres: rows of one tenant edited,
removed, reordered or moved to another tenant directly in the database (the append-only
triggers dropped, as someone with the owner's rights would) fail that tenant's check,
naming the entry, while the other tenant's chain still verifies; appends of two
tenants run side by side and leave both chains intact."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from api.main import create_app
from core.db import keys as key_repo
from core.db.audit import add_audit_entry, verify_chain
from core.db.tables import AuditEntry
from tests.fixtures.api import make_settings

ACME, GLOBEX = "acme", "globex"
COLUMNS = "at, principal, action, object_type, object_id, data, prev_hash, entry_hash"


def append(session, tenant: str, number: int) -> None:
    add_audit_entry(
        session,
        principal=f"key_{tenant}",
        action="dataset.created",
        object_type="dataset",
        object_id=f"ds_01aaaaaaaaaaaaaaaaaaaaa{number:03d}",
        data={"sha256": str(number % 10) * 64},
        tenant=tenant,
    )
    session.commit()


def interleaved(session, per_tenant: int = 4) -> dict[str, list[int]]:
    """acme and globex append in turn; each tenant's entry ids, oldest first."""
    for number in range(per_tenant):
        append(session, ACME, 2 * number)
        append(session, GLOBEX, 2 * number + 1)
    return {tenant: ids_of(session, tenant) for tenant in (ACME, GLOBEX)}


def ids_of(session, tenant: str) -> list[int]:
    return list(
        session.scalars(
            select(AuditEntry.id).where(AuditEntry.tenant_id == tenant).order_by(AuditEntry.id)
        )
    )


@contextmanager
def triggers_dropped(session):
    """Drop the append-only triggers, tamper, commit, create them again."""
    sqlite = session.bind.dialect.name == "sqlite"
    if sqlite:
        for operation in ("UPDATE", "DELETE"):
            session.execute(text(f"DROP TRIGGER audit_log_no_{operation}"))
    else:
        session.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
    yield
    if sqlite:
        for operation in ("UPDATE", "DELETE"):
            session.execute(
                text(
                    f"CREATE TRIGGER audit_log_no_{operation} BEFORE {operation} ON audit_log "
                    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
                )
            )
    else:
        session.execute(
            text(
                "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
            )
        )
    session.commit()


def swap(session, first: int, second: int) -> None:
    """Two entries trade places, hashes and all."""
    rows = {
        i: session.execute(text(f"SELECT {COLUMNS} FROM audit_log WHERE id = :i"), {"i": i}).one()
        for i in (first, second)
    }
    cast = "CAST(:data AS JSONB)" if session.bind.dialect.name == "postgresql" else ":data"
    for target, source in ((first, second), (second, first)):
        values = rows[source]._asdict() | {"data": json.dumps(rows[source].data), "id": target}
        session.execute(
            text(
                "UPDATE audit_log SET at = :at, principal = :principal, action = :action, "
                "object_type = :object_type, object_id = :object_id, "
                f"data = {cast}, prev_hash = :prev_hash, entry_hash = :entry_hash "
                "WHERE id = :id"
            ),
            values,
        )


# (how, the acme entry named: index into acme's ids or None for the head, what it says)
TAMPERING = {
    "edit": ("UPDATE audit_log SET principal = 'someone-else' WHERE id = :a1", 1, "changed"),
    "edit data": ("UPDATE audit_log SET data = NULL WHERE id = :a1", 1, "changed"),
    "delete": ("DELETE FROM audit_log WHERE id = :a1", 2, "removed or moved"),
    "delete newest": ("DELETE FROM audit_log WHERE id = :a3", None, "newest entries were removed"),
    "reorder": ("swap", 1, "reordered"),
    "move to globex": ("UPDATE audit_log SET tenant_id = 'globex' WHERE id = :a1", 2, "moved"),
}


@pytest.mark.parametrize("how", TAMPERING)
def test_tampering_with_one_tenant_fails_its_chain_only(db_session, how):
    session = db_session
    ids = interleaved(session)
    tamper, named, problem = TAMPERING[how]
    with triggers_dropped(session):
        if tamper == "swap":
            swap(session, ids[ACME][1], ids[ACME][2])
        else:
            session.execute(text(tamper), {f"a{i}": ids[ACME][i] for i in range(4)})
    acme = verify_chain(session, ACME)
    assert (acme.valid, acme.tenant) == (False, ACME)
    assert acme.entry_id == (None if named is None else ids[ACME][named]), acme
    assert problem in acme.problem
    globex = verify_chain(session, GLOBEX)
    if how == "move to globex":
        # The moved entry is in globex's order now, and hashed as acme's: named there too.
        assert (globex.valid, globex.entry_id) == (False, ids[ACME][1])
        assert "changed" in globex.problem or "removed or moved" in globex.problem
    else:
        assert (globex.valid, globex.entries) == (True, 4), globex


def test_an_entry_moved_past_the_other_tenants_head_is_caught(db_session):
    """Acme's newest entry, newer than all of globex's, moved to globex: globex's head
    does not reach it, but it does not follow that head either."""
    session = db_session
    interleaved(session)
    append(session, ACME, 99)
    newest = ids_of(session, ACME)[-1]
    with triggers_dropped(session):
        session.execute(
            text("UPDATE audit_log SET tenant_id = 'globex' WHERE id = :i"), {"i": newest}
        )
    acme = verify_chain(session, ACME)
    assert acme.valid is False and "newest entries were removed or moved" in acme.problem
    globex = verify_chain(session, GLOBEX)
    assert (globex.valid, globex.entry_id, globex.entries) == (False, newest, 4)
    assert "moved here from another tenant" in globex.problem
    # An entry moved to a tenant that had no chain at all is caught the same way.
    with triggers_dropped(session):
        session.execute(
            text("UPDATE audit_log SET tenant_id = 'initech' WHERE id = :i"), {"i": newest}
        )
    initech = verify_chain(session, "initech")
    assert (initech.valid, initech.entry_id) == (False, newest)


def test_the_api_checks_the_callers_tenant_and_the_cli_names_the_tenant(
    tmp_path, database_url, session_factory, monkeypatch
):
    keys = {}
    with session_factory() as session:
        for tenant in (ACME, GLOBEX):
            keys[tenant] = key_repo.create_key(session, tenant=tenant, role="auditor")[1]
        session.commit()
        ids = interleaved(session)
        with triggers_dropped(session):
            session.execute(
                text("UPDATE audit_log SET principal = 'someone-else' WHERE id = :i"),
                {"i": ids[ACME][2]},
            )
    settings = make_settings(tmp_path / "home", database_url)
    with TestClient(create_app(settings)) as client:
        checks = {
            tenant: client.get(
                "/v1/audit/verify", headers={"Authorization": f"Bearer {keys[tenant]}"}
            ).json()
            for tenant in (ACME, GLOBEX)
        }
    assert (checks[ACME]["tenant"], checks[ACME]["valid"]) == (ACME, False)
    assert (checks[ACME]["entry_id"], checks[ACME]["entries"]) == (ids[ACME][2], 2)
    # The keys were made through the repository, which audits nothing: 4 entries each.
    assert (checks[GLOBEX]["tenant"], checks[GLOBEX]["valid"]) == (GLOBEX, True)
    assert checks[GLOBEX]["entries"] == 4

    from cli.main import app as cli
    from core.settings import get_settings

    monkeypatch.setenv(
        "OBLIVIATE_DATABASE_URL",
        str(session_factory.kw["bind"].url.render_as_string(hide_password=False)),
    )
    monkeypatch.setenv("OBLIVIATE_SIGNING_KEY_FILE", str(tmp_path / "absent.pem"))
    get_settings.cache_clear()
    try:
        every = CliRunner().invoke(cli, ["audit", "verify"])
        one = CliRunner().invoke(cli, ["audit", "verify", "--tenant", GLOBEX, "--json"])
        bad = CliRunner().invoke(cli, ["audit", "verify", "--tenant", "Not A Tenant"])
    finally:
        get_settings.cache_clear()
    output = " ".join(every.output.split())
    assert every.exit_code == 1, output
    assert (
        f"FAILED tenant acme: after 2 good entries and 0 good checkpoints, entry {ids[ACME][2]}"
        in output
    )
    assert "OK tenant globex: 4 audit entries" in output
    assert one.exit_code == 0, one.output
    report = json.loads(one.output)
    assert report["valid"] is True
    assert [(c["tenant"], c["entries"]) for c in report["chains"]] == [(GLOBEX, 4)]
    assert bad.exit_code == 2 and "--tenant" in bad.output


def test_appends_of_two_tenants_run_side_by_side(session_factory):
    """Many appends in two tenants at once, from several threads: every one lands and
    both chains verify."""
    errors = []

    def writer(tenant: str, start: int) -> None:
        try:
            with session_factory() as session:
                for number in range(start, start + 10):
                    append(session, tenant, number)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(tenant, start))
        for tenant in (ACME, GLOBEX)
        for start in (0, 100)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_factory() as session:
        for tenant in (ACME, GLOBEX):
            check = verify_chain(session, tenant)
            assert (check.valid, check.entries) == (True, 20), check


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_an_open_append_does_not_hold_up_another_tenant(session_factory):
    """Postgres: acme's append holds acme's head until it commits; globex appends and
    commits meanwhile (SQLite has one write lock for the whole database)."""
    with session_factory() as acme, session_factory() as globex:
        append(acme, ACME, 0)
        add_audit_entry(
            acme,
            principal="p",
            action="job.submitted",
            object_type="job",
            object_id="job_x",
            tenant=ACME,
        )  # not committed: acme's head row stays locked
        globex.execute(text("SET LOCAL lock_timeout = '2s'"))
        append(globex, GLOBEX, 1)  # would fail after 2 s if it waited for acme's lock
        acme.commit()
        for tenant, count in ((ACME, 2), (GLOBEX, 1)):
            check = verify_chain(globex, tenant)
            assert (check.valid, check.entries) == (True, count), check
