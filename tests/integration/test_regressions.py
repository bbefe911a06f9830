"""Regression re-checks on SQLite and Postgres: which certified requests a later job
re-checks (those certified on an ancestor of its base model), shredded forget sets
reported as not checked, and a regressed request needing attention again over HTTP."""

from __future__ import annotations

from datetime import timedelta

from core.db.ids import new_id
from core.db.tables import Certificate, Dataset
from core.db.types import utcnow
from core.regressions import certified_ancestors, record_regression_checks, regression_outcome
from tests.fixtures.api import make_dataset, make_job
from tests.integration.test_api_deletion_requests import (
    FORGOTTEN,
    NOT_FORGOTTEN,
    finish_succeeded,
    request_of,
)

HOLDOUT = "ds_01hhhhhhhhhhhhhhhhhhhhhhhh"


def certify(client, session_factory, subject: str, **spec) -> tuple[str, str]:
    """A request fulfilled by a job (output model named after it) with a certificate."""
    request_id = client.post("/v1/deletion-requests", json={"subject": subject}).json()["id"]
    with session_factory() as session:
        job_id = make_job(session, deletion_request=request_id, **spec).id
        finish_succeeded(session, job_id, FORGOTTEN)
        session.add(
            Certificate(
                id=new_id("cert"),
                deletion_request_id=request_id,
                job_id=job_id,
                key_id="k",
                document={},
            )
        )
        session.commit()
    return request_id, job_id


def test_a_later_job_rechecks_requests_certified_on_its_ancestors(client, session_factory):
    with session_factory() as session:
        make_dataset(session, HOLDOUT)
        session.commit()
    first, first_job = certify(client, session_factory, "a", evaluation={"holdout": HOLDOUT})
    # a second certified job built on the first one's output, on a forget set shredded later
    shredded = "ds_01ssssssssssssssssssssssss"
    with session_factory() as session:
        make_dataset(session, shredded)
        session.commit()
    second, second_job = certify(
        client,
        session_factory,
        "b",
        model=first_job,
        evaluation={"holdout": HOLDOUT, "forget": shredded},
    )
    unrelated, _ = certify(client, session_factory, "c", evaluation={"holdout": HOLDOUT})
    with session_factory() as session:
        session.get(Dataset, shredded).shredded_at = utcnow()
        session.commit()
        targets = {t.request_id: t for t in certified_ancestors(session, second_job)}
        assert set(targets) == {first, second}  # not the unrelated request
        assert targets[first].certified_job_id == first_job
        assert targets[first].holdout_dataset_id == HOLDOUT and targets[first].not_checked is None
        assert "shredded" in targets[second].not_checked
        assert certified_ancestors(session, "demo-target") == []
        # continuing the second job's saved run from the original base finds both too
        continued = certified_ancestors(session, "demo-target", continue_from=second_job)
        assert {t.request_id for t in continued} == {first, second}

        later = make_job(session, model=second_job)
        outcomes = [
            {**regression_outcome(targets[second], None, None, default_threshold=0.05)},
            {
                **targets[first].to_dict(),
                "status": "not_forgotten",
                "regressed": True,
                "reason": NOT_FORGOTTEN["reason"],
            },
        ]
        record_regression_checks(session, later.id, outcomes)
        session.commit()

    view = request_of(client, first)
    assert view["status"] == "needs_attention"
    assert f"job {later.id}" in view["status_reason"]
    assert f"certified job {first_job}" in view["status_reason"]
    assert [(r["job_id"], r["status"], r["regressed"]) for r in view["regressions"]] == [
        (later.id, "not_forgotten", True)
    ]
    listed = client.get("/v1/deletion-requests", params={"status": "needs_attention"}).json()
    assert first in {item["id"] for item in listed["data"]}
    # the shredded one was not checked: still fulfilled, and it says so
    view = request_of(client, second)
    assert view["status"] == "fulfilled"
    assert view["regressions"][0]["status"] == "not_checked"
    assert request_of(client, unrelated)["regressions"] == []
    entries = client.get(
        "/v1/audit", params={"object_id": first, "action": "deletion_request.regressed"}
    ).json()["data"]
    assert [e["data"]["job_id"] for e in entries] == [later.id]

    # a newer check that finds it forgotten again clears the flag
    with session_factory() as session:
        record_regression_checks(
            session,
            later.id,
            [{**targets[first].to_dict(), "status": "forgotten", "regressed": False}],
        )
        session.commit()
    assert request_of(client, first)["status"] == "fulfilled"


def test_a_regression_before_a_newer_fulfilment_does_not_count(client, session_factory):
    with session_factory() as session:
        make_dataset(session, HOLDOUT)
        session.commit()
    request_id, job_id = certify(client, session_factory, "a", evaluation={"holdout": HOLDOUT})
    with session_factory() as session:
        target = certified_ancestors(session, job_id)[0]
        later = make_job(session, model=job_id)
        (check,) = record_regression_checks(
            session, later.id, [{**target.to_dict(), "status": "not_forgotten", "regressed": True}]
        )
        session.commit()
        assert request_of(client, request_id)["status"] == "needs_attention"
        check.checked_at = utcnow() - timedelta(days=1)  # before the request's fulfilment
        session.commit()
    assert request_of(client, request_id)["status"] == "fulfilled"
