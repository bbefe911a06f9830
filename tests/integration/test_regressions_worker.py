"""Regression re-checks end to end with the tiny demo model (SQLite): a request is
certified on a job's model, a later job continues from that model, and its evaluation
re-checks the request's forget records with the new model and records the outcome in
the report, the job's events and the database."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core.db import deletion_requests as deletion_repo
from core.db import jobs
from core.db.artifacts import get_report
from core.db.ids import new_id
from core.db.tables import Certificate, Job, JobEvent, RegressionCheck
from core.spec import parse_job_spec
from tests.integration.test_api_deletion_requests import FORGOTTEN
from tests.integration.test_worker_runner import store, worker_settings  # noqa: F401
from worker.runner import JobRunner

HOLDOUT = "ds_demo_holdout"


def submit(session_factory, model: str, forget: str, request_id: str | None = None) -> str:
    body = {
        "model": model,
        "forget": forget,
        "method": "ga",
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3,
            "precision": "fp32",
        },
        "evaluation": {"generate": False, "holdout": HOLDOUT, "max_samples": 16},
    }
    if request_id is not None:
        body["deletion_request"] = request_id
    with session_factory() as session:
        job = jobs.create_job(session, parse_job_spec(body), forget)
        session.commit()
        return job.id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_later_job_on_a_certified_model_rechecks_and_records(
    worker_settings,  # noqa: F811
    session_factory,
    store,  # noqa: F811
):
    runner = JobRunner(worker_settings, session_factory, store, "w1")
    with session_factory() as session:
        request_id = deletion_repo.create_deletion_request(session, subject="author").request.id
        session.commit()
    first = submit(session_factory, "demo-target", "ds_demo_forget01", request_id)
    assert runner.run(first) == "succeeded"
    with session_factory() as session:
        # certified (the tiny model's own verdict is not the point here)
        session.get(Job, first).verdict = FORGOTTEN
        session.add(
            Certificate(
                id=new_id("cert"),
                deletion_request_id=request_id,
                job_id=first,
                key_id="k",
                document={},
            )
        )
        session.commit()
        assert deletion_repo.get_deletion_request(session, request_id).status == "fulfilled"

    later = submit(session_factory, first, "ds_demo_forget05")
    assert runner.run(later) == "succeeded"
    with session_factory() as session:
        report = json.loads(store.get_bytes(get_report(session, later).json_key))
        [outcome] = report["regressions"]
        assert (outcome["request_id"], outcome["certified_job_id"]) == (request_id, first)
        assert outcome["status"] in ("forgotten", "not_forgotten", "not_verifiable")
        assert {c["name"] for c in outcome["checks"]} >= {"knowledge"}
        [row] = session.scalars(select(RegressionCheck)).all()
        assert (row.job_id, row.status, row.regressed) == (
            later,
            outcome["status"],
            outcome["regressed"],
        )
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == later, JobEvent.type == "regression")
        ).all()
        assert len(events) == 1
        assert events[0].level == ("warning" if outcome["regressed"] else "info")
        view = deletion_repo.get_deletion_request(session, request_id)
        expected = "needs_attention" if outcome["regressed"] else "fulfilled"
        assert view.status == expected
        if outcome["regressed"]:
            assert f"job {later}" in view.status_reason
