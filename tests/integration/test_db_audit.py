"""The audit log on SQLite and Postgres: every audited action appends one entry, in the
action's own transaction, naming the caller; the database refuses UPDATE and DELETE."""

from __future__ import annotations

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
