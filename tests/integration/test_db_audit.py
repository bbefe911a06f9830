"""The audit log on SQLite and Postgres: every audited action appends one entry, in the
action's own transaction, naming the caller; the database refuses UPDATE and DELETE."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from datetime import timedelta
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from api.auth import ANONYMOUS, principal_of
from api.main import create_app
from api.schemas.audit import AuditAction
from core.db import jobs as jobs_repo
from core.db.audit import AUDIT_ACTIONS, WORKER, add_audit_entry
from core.db.tables import AuditEntry
from core.db.types import utcnow
from tests.fixtures.api import job_body, make_job, make_settings, upload_dataset

KEY = "k-compliance"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def keyed_client(tmp_path, database_url):
    settings = make_settings(tmp_path / "home", database_url, api_keys=[KEY, "k-other"])
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def entries(client, **params) -> list[dict]:
    response = client.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_every_action_is_audited_with_its_principal(keyed_client, session_factory):
    client = keyed_client
    caller = principal_of(KEY)
    client.post("/v1/models", json={"name": "base-model", "source": "org/base-model"})
    dataset = client.post(
        "/v1/datasets", files={"file": ("forget.jsonl", b'{"question": "q", "answer": "a"}')}
    ).json()
    request_id = client.post("/v1/deletion-requests", json={"subject": "Jane Roe"}).json()["id"]
    body = job_body(dataset["id"], deletion_request=request_id)
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "j-1"}).json()["id"]
    replay = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "j-1"})
    assert replay.status_code == 200  # a replay records nothing new
    second = client.post("/v1/jobs", json=job_body(dataset["id"])).json()["id"]
    assert client.post(f"/v1/jobs/{second}/cancel").json()["status"] == "cancelled"
    with session_factory() as session:
        jobs_repo.claim_job(session, first, "w")
        jobs_repo.finish_job(session, first, "failed", {"code": "training_failed", "message": "m"})

    log = entries(client)
    assert [(e["action"], e["object_type"], e["object_id"], e["principal"]) for e in log] == [
        ("dataset.created", "dataset", dataset["id"], caller),
        ("deletion_request.created", "deletion_request", request_id, caller),
        ("job.submitted", "job", first, caller),
        ("job.submitted", "job", second, caller),
        ("job.cancel_requested", "job", second, caller),
        ("job.finished", "job", first, WORKER),
    ]
    assert all(e["object"] == "audit_entry" for e in log)
    assert [e["id"] for e in log] == sorted(e["id"] for e in log)
    assert log[0]["data"] == {"sha256": dataset["sha256"], "record_count": 1}
    assert log[1]["data"] == {"external_ref": None}  # never the subject: it names a person
    assert log[2]["data"] == {
        "kind": "unlearn",
        "method": "npo",
        "model": "base-model",
        "forget": dataset["id"],
        "train": None,
        "deletion_request": request_id,
    }
    assert log[4]["data"] == {"status": "cancelled"}
    assert log[5]["data"] == {"status": "failed", "error_code": "training_failed"}
    now = utcnow()
    for entry in log:  # the database's clock (whole seconds on SQLite)
        at = entry["at"]
        assert at.endswith(("Z", "+00:00")), at
    stamps = [e["at"] for e in log]
    assert stamps == sorted(stamps)
    with session_factory() as session:
        newest = session.scalar(select(func.max(AuditEntry.at)))
    assert now - timedelta(minutes=5) < newest <= now + timedelta(minutes=5)

    assert [e["object_id"] for e in entries(client, object_id=first)] == [first, first]
    assert [e["object_id"] for e in entries(client, action="job.submitted")] == [first, second]
    assert [e["action"] for e in entries(client, principal=WORKER)] == ["job.finished"]
    assert entries(client, principal=ANONYMOUS) == []
    assert entries(client, object_id=second, action="job.finished") == []

    seen, after = [], None
    while True:
        params = {"limit": 4} | ({"after": after} if after is not None else {})
        page = client.get("/v1/audit", params=params).json()
        seen += page["data"]
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert seen == log


def test_without_auth_the_principal_is_anonymous(client):
    dataset = upload_dataset(client)
    [entry] = entries(client)
    assert (entry["action"], entry["object_id"], entry["principal"]) == (
        "dataset.created",
        dataset,
        ANONYMOUS,
    )


def test_failed_actions_leave_no_entry(client, session_factory):
    missing = "ds_00000000000000000000000000"
    assert client.post("/v1/jobs", json=job_body(missing)).status_code == 422
    assert client.post("/v1/deletion-requests", json={"subject": ""}).status_code == 422
    with session_factory() as session:
        job_id = make_job(session).id
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409  # already cancelled
    assert [e["action"] for e in entries(client)] == ["job.cancel_requested"]


def test_query_parameters_are_validated(client):
    for params, param in [
        ({"action": "job.deleted"}, "action"),
        ({"after": -1}, "after"),
        ({"after": "x"}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"object_id": "not an id"}, "object_id"),
        ({"principal": "a b"}, "principal"),
    ]:
        response = client.get("/v1/audit", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET principal = 'someone-else'", "DELETE FROM audit_log"],
)
def test_the_database_refuses_to_change_or_remove_entries(session_factory, statement):
    with session_factory() as session:
        add_audit_entry(
            session,
            principal="anonymous",
            action="dataset.created",
            object_type="dataset",
            object_id="ds_01aaaaaaaaaaaaaaaaaaaaaaaa",
            data={"sha256": "0" * 64},
        )
        session.commit()
        with pytest.raises(DBAPIError, match="audit_log is append-only"):
            session.execute(text(statement))
        session.rollback()
        [entry] = session.scalars(select(AuditEntry))
        assert entry.principal == "anonymous" and entry.data == {"sha256": "0" * 64}


def test_unknown_actions_are_a_programming_error(db_session):
    with pytest.raises(ValueError, match="audit action"):
        add_audit_entry(
            db_session, principal="p", action="job.deleted", object_type="job", object_id="job_x"
        )


def test_action_names_match_the_api_schema():
    assert set(get_args(AuditAction)) == set(AUDIT_ACTIONS)


def test_jobs_the_reaper_ends_are_audited_as_finished_by_the_reaper(db_session):
    from core.db.audit import REAPER
    from core.db.tables import Job

    now = utcnow()
    job = make_job(db_session)
    jobs_repo.claim_job(db_session, job.id, "w")
    db_session.execute(
        Job.__table__.update()
        .where(Job.id == job.id)
        .values(started_at=now - timedelta(hours=25), heartbeat_at=now - timedelta(minutes=10))
    )
    db_session.commit()
    jobs_repo.reap_stale_jobs(
        db_session,
        now=now,
        stale_after_s=120,
        requeue_queued_after_s=300,
        max_attempts=3,
        time_limit_s=24 * 3600,
    )
    db_session.commit()
    rows = db_session.scalars(select(AuditEntry).where(AuditEntry.object_id == job.id)).all()
    assert [(r.action, r.principal, r.data) for r in rows][-1] == (
        "job.finished",
        REAPER,
        {"status": "failed", "error_code": "time_limit"},
    )


# ------------------------------------------------------------------ the hash chain


@contextmanager
def triggers_lifted(session):
    """What someone with the database's owner rights can do: lift the append-only
    triggers, rewrite history, put them back."""
    sqlite = session.bind.dialect.name == "sqlite"
    if sqlite:
        for operation in ("UPDATE", "DELETE"):
            session.execute(text(f"DROP TRIGGER audit_log_no_{operation}"))
    else:
        session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
    try:
        yield
        session.commit()
    finally:
        if not sqlite:
            session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
            session.commit()


def four_entries(session) -> list[int]:
    for number in range(4):
        add_audit_entry(
            session,
            principal="anonymous",
            action="dataset.created",
            object_type="dataset",
            object_id=f"ds_01aaaaaaaaaaaaaaaaaaaaaaa{number}",
            data={"sha256": str(number) * 64, "records": number},
        )
        session.commit()
    return list(session.scalars(select(AuditEntry.id).order_by(AuditEntry.id)))


def test_the_chain_verifies_through_the_api_and_the_cli(client, session_factory, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app as cli
    from core.settings import get_settings

    with session_factory() as session:
        ids = four_entries(session)
        first = session.get(AuditEntry, ids[0])
        # Recomputed here from the documented rule, not by the code under test.
        content = {
            "tenant": "default",
            "action": "dataset.created",
            "at": first.at.isoformat(),
            "data": {"records": 0, "sha256": "0" * 64},
            "object_id": "ds_01aaaaaaaaaaaaaaaaaaaaaaa0",
            "object_type": "dataset",
            "principal": "anonymous",
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        expected = hashlib.sha256(f"{'0' * 64}\n{canonical}".encode()).hexdigest()
        assert (first.prev_hash, first.entry_hash) == ("0" * 64, expected)
    check = client.get("/v1/audit/verify").json()
    assert check["valid"] is True and check["entries"] == 4
    assert client.get("/v1/audit").json()["data"][-1]["entry_hash"] == check["head_hash"]

    monkeypatch.setenv(
        "OBLIVIATE_DATABASE_URL",
        str(session_factory.kw["bind"].url.render_as_string(hide_password=False)),
    )
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["audit", "verify"])
    finally:
        get_settings.cache_clear()
    output = " ".join(result.output.split())  # rich wraps lines
    assert result.exit_code == 0 and "OK tenant default: 4 audit entries" in output, output


@pytest.mark.parametrize(
    ("tamper", "bad_entry", "problem"),
    [
        ("UPDATE audit_log SET principal = 'someone-else' WHERE id = :second", 1, "changed"),
        ("UPDATE audit_log SET data = NULL WHERE id = :second", 1, "changed"),
        ("DELETE FROM audit_log WHERE id = :second", 2, "removed or moved"),
        ("DELETE FROM audit_log WHERE id = :last", None, "the newest entries were removed"),
        ("swap", 1, "the entries were reordered"),
    ],
)
def test_edits_removals_and_reordering_are_detected(
    client, session_factory, tamper, bad_entry, problem
):
    with session_factory() as session:
        ids = four_entries(session)
        with triggers_lifted(session):
            if tamper == "swap":  # entries 2 and 3 trade places, hashes and all
                columns = (
                    "at, principal, action, object_type, object_id, data, prev_hash, entry_hash"
                )
                rows = {
                    i: session.execute(
                        text(f"SELECT {columns} FROM audit_log WHERE id = :i"), {"i": i}
                    ).one()
                    for i in ids[1:3]
                }
                for target, source in ((ids[1], ids[2]), (ids[2], ids[1])):
                    values = rows[source]._asdict()
                    values["data"] = json.dumps(values["data"])
                    session.execute(
                        text(
                            "UPDATE audit_log SET at = :at, principal = :principal, action = "
                            ":action, object_type = :object_type, object_id = :object_id, "
                            f"data = {'CAST(:data AS JSONB)' if session.bind.dialect.name == 'postgresql' else ':data'}, "
                            "prev_hash = :prev_hash, entry_hash = :entry_hash WHERE id = :id"
                        ),
                        {**values, "id": target},
                    )
            else:
                session.execute(text(tamper), {"second": ids[1], "last": ids[-1]})
    check = client.get("/v1/audit/verify").json()
    assert check["valid"] is False and problem in check["problem"]
    assert check["entry_id"] == (None if bad_entry is None else ids[bad_entry])
