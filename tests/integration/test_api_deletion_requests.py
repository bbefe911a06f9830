"""Deletion requests over HTTP on SQLite and Postgres: create, read and page them, link
jobs to them, and watch the derived status and the evidence follow the jobs."""

from __future__ import annotations

from typing import get_args

import pytest
from sqlalchemy.exc import IntegrityError

from api.schemas.deletion_requests import DeletionRequestStatus
from core.db import artifacts
from core.db import deletion_requests as deletion_repo
from core.db import jobs as jobs_repo
from core.db.idempotency import add_idempotency_key
from core.db.model_registry import register_model as register_model_row
from tests.fixtures.api import job_body, make_job, register_model, upload_dataset

MISSING = "dr_00000000000000000000000000"
SUMMARY = {
    "forget_quality": 0.42,
    "forget_quality_before": 1e-6,
    "forget_quality_reason": None,
    "model_utility": 0.5,
    "model_utility_ratio": 0.97,
    "forget_probability": 0.03,
    "retain_probability": 0.8,
    "forget_truth_ratio": 0.6,
    "forget_rouge": 0.1,
    "retain_rouge": 0.9,
    "extraction_strength": 0.05,
    "exact_memorization": 0.2,
    "mia_auc": {"loss": 0.51, "zlib": 0.5, "min_k": 0.52, "min_k_plus_plus": 0.49},
    "privleak": 3.5,
    "privleak_before": 80.0,
    "privleak_reason": None,
    "verbmem": None,
    "knowmem": 12.0,
    "knowmem_retain": 40.0,
}


#: the published point's verdict as the worker stores it (core.evaluation.verdict)
FORGOTTEN = {
    "status": "forgotten",
    "forgotten": True,
    "reason": "the model no longer knows the forget answers",
    "checks": [
        {
            "name": "knowledge",
            "label": "truth ratios, forget vs holdout (KS p)",
            "value": 0.4,
            "threshold": 0.05,
            "passed": True,
            "description": "",
            "flag": None,
        },
    ],
    "target_met": True,
    "utility_ratio": 0.97,
}
NOT_FORGOTTEN = {
    **FORGOTTEN,
    "status": "not_forgotten",
    "forgotten": False,
    "reason": "the model still knows the forget answers (truth-ratio p 0.001 < 0.05)",
    "target_met": False,
}


def create(client, body=None, **headers):
    return client.post(
        "/v1/deletion-requests", json=body if body is not None else {"subject": "x"}, **headers
    )


def error_of(response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    return response.status_code, error["code"], error["param"]


def request_of(client, request_id: str) -> dict:
    response = client.get(f"/v1/deletion-requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_create_get_and_page_newest_first(client):
    body = {
        "subject": "  everything about Jane Roe  ",
        "description": "GDPR art. 17 request",
        "external_ref": "DSR-1234",
        "metadata": {"team": "privacy", "region:eu": "de"},
    }
    response = create(client, body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/deletion-requests/{created['id']}"
    assert created["id"].startswith("dr_") and created["object"] == "deletion_request"
    assert created["subject"] == "everything about Jane Roe"  # whitespace trimmed
    assert created["description"] == "GDPR art. 17 request"
    assert created["external_ref"] == "DSR-1234"
    assert created["metadata"] == {"team": "privacy", "region:eu": "de"}
    assert (created["status"], created["job_count"], created["jobs"]) == ("open", 0, [])
    assert request_of(client, created["id"]) == created

    minimal = create(client, {"subject": "author 7"}).json()
    assert minimal["description"] is None and minimal["external_ref"] is None
    assert minimal["metadata"] == {}
    ids = [created["id"], minimal["id"]] + [
        create(client, {"subject": f"s{i}"}).json()["id"] for i in range(3)
    ]

    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/deletion-requests", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [item["id"] for item in page["data"]]
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert seen == list(reversed(ids))

    for request_id in (MISSING, "not-an-id", "dr_%00"):
        assert error_of(client.get(f"/v1/deletion-requests/{request_id}")) == (
            404,
            "deletion_request_not_found",
            "deletion_request_id",
        )
    for params, param in [
        ({"status": "done"}, "status.0"),
        ({"after": "not-an-id"}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
    ]:
        assert error_of(client.get("/v1/deletion-requests", params=params))[::2] == (422, param)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, (422, "missing_field", "subject")),
        ({"subject": ""}, (422, "invalid_value", "subject")),
        ({"subject": "   "}, (422, "invalid_value", "subject")),
        ({"subject": "x" * 513}, (422, "invalid_value", "subject")),
        ({"subject": 5}, (422, "invalid_value", "subject")),
        ({"subject": "x", "description": "d" * 4097}, (422, "invalid_value", "description")),
        ({"subject": "x", "external_ref": "r" * 257}, (422, "invalid_value", "external_ref")),
        ({"subject": "x", "metadata": {"a b": "v"}}, (422, "invalid_value", "metadata")),
        ({"subject": "x", "metadata": {"k": "v" * 513}}, (422, "invalid_value", "metadata")),
        ({"subject": "x", "metadata": {"k": 1}}, (422, "invalid_value", "metadata.k")),
        (
            {"subject": "x", "metadata": {f"k{i}": "v" for i in range(17)}},
            (422, "invalid_value", "metadata"),
        ),
        ({"subject": "x", "status": "fulfilled"}, (422, "unknown_field", "status")),
        ({"subject": "a\u0000b"}, (422, "invalid_value", "subject")),
    ],
)
def test_invalid_bodies_name_the_field(client, body, expected):
    assert error_of(create(client, body)) == expected


def test_malformed_bodies(client):
    def raw(content: bytes):
        return client.post(
            "/v1/deletion-requests", content=content, headers={"content-type": "application/json"}
        )

    assert error_of(raw(b'{"subject": ')) == (400, "invalid_json", None)
    assert error_of(raw(b'["subject"]')) == (422, "invalid_body", None)


def test_idempotency_key_replays_or_conflicts(client, session_factory):
    body = {"subject": "author 3", "external_ref": "T-1"}
    first = create(client, body, headers={"Idempotency-Key": "dr-1"})
    assert first.status_code == 201
    again = create(client, dict(reversed(list(body.items()))), headers={"Idempotency-Key": "dr-1"})
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    other = create(client, {"subject": "author 4"}, headers={"Idempotency-Key": "dr-1"})
    assert error_of(other) == (409, "idempotency_key_reused", "Idempotency-Key")
    assert error_of(create(client, body, headers={"Idempotency-Key": "k" * 300}))[:2] == (
        422,
        "invalid_value",
    )
    # One key namespace per caller: a key that made a deletion request cannot make a job.
    register_model(client)
    job = client.post(
        "/v1/jobs", json=job_body(upload_dataset(client)), headers={"Idempotency-Key": "dr-1"}
    )
    assert error_of(job) == (409, "idempotency_key_reused", "Idempotency-Key")
    listed = client.get("/v1/deletion-requests").json()["data"]
    assert [item["id"] for item in listed] == [first.json()["id"]]
    with session_factory() as session, pytest.raises(IntegrityError):
        add_idempotency_key(session, "anonymous", "neither", "0" * 64)  # made nothing: refused


def test_unknown_deletion_request_on_job_submission(client):
    register_model(client)
    forget = upload_dataset(client)
    for value in (MISSING, "not-an-id", "ds_" + "0" * 26):
        response = client.post("/v1/jobs", json=job_body(forget, deletion_request=value))
        assert error_of(response) == (422, "unknown_deletion_request", "deletion_request")
    assert error_of(client.post("/v1/jobs", json=job_body(forget, deletion_request=7)))[::2] == (
        422,
        "deletion_request",
    )
    assert client.get("/v1/jobs").json()["data"] == []


def test_status_follows_the_linked_jobs_and_shows_their_evidence(client, session_factory):
    register_model(client)
    forget = upload_dataset(client)
    request_id = create(client, {"subject": "author 9"}).json()["id"]
    idle_id = create(client, {"subject": "nobody yet"}).json()["id"]

    def submit() -> str:
        response = client.post("/v1/jobs", json=job_body(forget, deletion_request=request_id))
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["deletion_request"] == request_id
        assert client.get(f"/v1/jobs/{job['id']}").json()["deletion_request"] == request_id
        return job["id"]

    failed = submit()
    view = request_of(client, request_id)
    assert (view["status"], view["job_count"]) == ("in_progress", 1)
    [linked] = view["jobs"]
    assert linked["id"] == failed and linked["status"] == "queued"
    assert (linked["method"], linked["model"]) == ("npo", "base-model")
    assert linked["finished_at"] is None and linked["error"] is None
    assert linked["evidence"] is None and linked["report_url"] is None
    assert linked["output_model"] is None and linked["created_at"]

    with session_factory() as session:
        jobs_repo.claim_job(session, failed, "w")
        assert request_of(client, request_id)["status"] == "in_progress"  # running
        error = {"code": "training_failed", "message": "out of memory"}
        jobs_repo.finish_job(session, failed, "failed", error)
    view = request_of(client, request_id)
    assert view["status"] == "needs_attention"
    assert f"{failed}, failed (training_failed: out of memory)" in view["status_reason"]
    assert view["certificate_url"] is None and view["fulfilled_by"] is None
    assert view["jobs"][0]["error"] == {**error, "param": None}
    assert view["jobs"][0]["finished_at"]

    succeeded = submit()
    assert request_of(client, request_id)["status"] == "in_progress"  # the retry is queued
    with session_factory() as session:
        jobs_repo.claim_job(session, succeeded, "w")
        report_key = f"jobs/{succeeded}/report/report.json"
        artifacts.save_report(session, succeeded, "1.0", SUMMARY, report_key, None)
        model = register_model_row(session, succeeded, "s3://b/out", "job_output", succeeded)
        session.commit()
        jobs_repo.finish_job(
            session, succeeded, "succeeded", output_model_id=model.id, verdict=FORGOTTEN
        )

    view = request_of(client, request_id)
    assert (view["status"], view["job_count"]) == ("fulfilled", 2)
    assert view["fulfilled_by"] == succeeded and FORGOTTEN["reason"] in view["status_reason"]
    assert view["certificate_url"] == f"/v1/deletion-requests/{request_id}/certificate"
    assert view["jobs"][0]["verdict"] == {
        "status": "forgotten",
        "reason": FORGOTTEN["reason"],
        "target_met": True,
    }
    assert [job["id"] for job in view["jobs"]] == [succeeded, failed]  # newest first
    newest = view["jobs"][0]
    assert newest["status"] == "succeeded" and newest["output_model"] == succeeded
    assert newest["report_url"] == f"/v1/jobs/{succeeded}/report.html"
    evidence = newest["evidence"]
    assert evidence == {key: SUMMARY.get(key) for key in evidence}
    assert evidence["forget_probability"] == 0.03 and evidence["privleak"] == 3.5
    assert evidence["mia_auc"]["min_k_plus_plus"] == 0.49
    assert "retain_rouge" not in evidence  # retain-side numbers are not deletion evidence

    # A later job on a fulfilled request puts it back in progress until it ends.
    third = submit()
    assert request_of(client, request_id)["status"] == "in_progress"
    client.post(f"/v1/jobs/{third}/cancel")
    assert request_of(client, request_id)["status"] == "fulfilled"

    def listed(**params) -> list[str]:
        response = client.get("/v1/deletion-requests", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["data"]]

    assert listed() == [idle_id, request_id]
    assert listed(status="fulfilled") == [request_id]
    assert listed(status="open") == [idle_id]
    assert listed(status=["open", "fulfilled"]) == [idle_id, request_id]
    assert listed(status=["in_progress", "needs_attention"]) == []
    page = client.get("/v1/deletion-requests", params={"status": "fulfilled"}).json()
    assert page["data"][0] == request_of(client, request_id)


def test_each_request_shows_its_newest_jobs_only(client, session_factory, monkeypatch):
    monkeypatch.setattr(deletion_repo, "MAX_LINKED_JOBS", 2)
    first = create(client, {"subject": "a"}).json()["id"]
    second = create(client, {"subject": "b"}).json()["id"]
    with session_factory() as session:
        jobs_of = {
            request_id: [make_job(session, deletion_request=request_id).id for _ in range(3)]
            for request_id in (first, second)
        }
        make_job(session)  # linked to nothing
    for item in client.get("/v1/deletion-requests").json()["data"]:
        assert item["job_count"] == 3
        assert [job["id"] for job in item["jobs"]] == jobs_of[item["id"]][:0:-1]


def test_status_names_match_the_repository():
    assert get_args(DeletionRequestStatus) == deletion_repo.DELETION_REQUEST_STATUSES


def finish_succeeded(session, job_id: str, verdict: dict | None) -> None:
    jobs_repo.claim_job(session, job_id, "w")
    artifacts.save_report(session, job_id, "1.0", SUMMARY, f"jobs/{job_id}/report.json", None)
    model = register_model_row(session, job_id, "s3://b/out", "job_output", job_id)
    session.commit()
    jobs_repo.finish_job(session, job_id, "succeeded", output_model_id=model.id, verdict=verdict)


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        (None, "succeeded without a forgetting verdict"),
        (NOT_FORGOTTEN, "succeeded but its verdict is not_forgotten: the model still knows"),
    ],
)
def test_a_job_that_ran_to_the_end_without_proof_needs_attention(
    client, session_factory, verdict, reason
):
    request_id = create(client, {"subject": "author 3"}).json()["id"]
    with session_factory() as session:
        job_id = make_job(session, deletion_request=request_id).id
        finish_succeeded(session, job_id, verdict)
    view = request_of(client, request_id)
    assert (view["status"], view["fulfilled_by"]) == ("needs_attention", None)
    assert f"job {job_id} {reason}" in view["status_reason"]
    response = client.get(f"/v1/deletion-requests/{request_id}/certificate")
    assert error_of(response) == (409, "certificate_not_available", "deletion_request_id")
    assert "needs_attention" in response.json()["error"]["message"]


def test_a_guard_does_not_fulfil_a_request(client, session_factory):
    """A guard keeps the subject out of generated answers, but the weights still hold
    it: even with a passing guard verdict the request needs an unlearning job."""
    from sqlalchemy import update

    from core.db.tables import Job

    request_id = create(client, {"subject": "author 4"}).json()["id"]
    with session_factory() as session:
        job_id = make_job(session, deletion_request=request_id).id
        session.execute(update(Job).where(Job.id == job_id).values(method="guard"))
        session.commit()
        finish_succeeded(session, job_id, FORGOTTEN)
    view = request_of(client, request_id)
    assert (view["status"], view["fulfilled_by"]) == ("needs_attention", None)
    assert f"job {job_id} built a guard" in view["status_reason"]
    response = client.get(f"/v1/deletion-requests/{request_id}/certificate")
    assert error_of(response) == (409, "certificate_not_available", "deletion_request_id")
