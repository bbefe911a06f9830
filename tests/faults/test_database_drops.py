"""Postgres connections terminated mid-job (``pg_terminate_backend`` of every
connection to the database, three times while a job trains): the job finishes on its
first attempt, and the API answers every request, the first after each drop included
(reads retry once on a fresh connection, writes ping theirs at checkout)."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.faults.checks import check_nothing_stuck, check_published_once, started_attempts
from tests.faults.conftest import FAULT_JOB, record, trials
from tests.fixtures.services import POSTGRES_ADMIN_URL
from tests.fixtures.stack import TERMINAL

pytestmark = pytest.mark.slow

LONG_JOB = {**FAULT_JOB, "hyperparameters": {**FAULT_JOB["hyperparameters"], "epochs": 100}}


def _terminate_every_connection(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()[0]


def test_terminated_connections_fail_no_job_and_no_request(stack):
    drops = trials(ci=3, soak_trials=15)
    started = time.monotonic()
    stack.start_worker()
    job_id = stack.http.post("/v1/jobs", json=LONG_JOB).json()["id"]
    stack.wait_for(job_id, lambda j: j["status"] == "running" and j["progress"]["step"] > 0)
    terminated, answered = 0, 0
    for _ in range(drops):
        terminated += _terminate_every_connection(stack.settings.database_url)
        # The first requests after the drop: a status read, a list, a submission.
        read = stack.http.get(f"/v1/jobs/{job_id}")
        assert read.status_code == 200, read.text
        listed = stack.http.get("/v1/jobs", params={"status": "running"})
        assert listed.status_code == 200, listed.text
        submitted = stack.http.post(
            "/v1/jobs", json={**FAULT_JOB, "evaluation": {"enabled": False}}
        )
        assert submitted.status_code == 201, submitted.text
        stack.http.post(f"/v1/jobs/{submitted.json()['id']}/cancel")
        answered += 3
        time.sleep(1.5)  # heartbeats, metric batches and the reaper hit the new pool
    job = stack.wait_for(job_id, lambda j: j["status"] in TERMINAL, timeout=300)[job_id]
    # On failure: what ended it, its last events, and the processes' logs (worker last).
    last_events = [event["message"] for event in stack.events(job_id)][-5:]
    assert job["status"] == "succeeded", (job.get("error"), last_events, stack.tail_logs())
    assert started_attempts(stack.events(job_id)) == [1]  # never reaped: heartbeats went on
    check_published_once(stack, job_id)
    check_nothing_stuck(stack)
    record(
        f"postgres pg_terminate_backend: {drops} drops mid-job ({terminated} connections), "
        f"{answered} requests right after them all answered (0 errors), the job succeeded "
        f"on attempt 1 ({time.monotonic() - started:.0f} s)"
    )
