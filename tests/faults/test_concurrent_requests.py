"""Concurrent submissions with repeated idempotency keys, over real HTTP against the
API process: one job per key, whatever the interleaving; and concurrent cancels of one
job: one cancellation, one audit entry."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.faults.conftest import FAULT_JOB, record, trials

pytestmark = pytest.mark.slow


def test_repeated_idempotency_keys_make_one_job_each(stack):
    keys = trials(ci=10, soak_trials=50)
    repeats = 8
    started = time.monotonic()
    run = time.time_ns()
    requests = [(f"fault-{run}-{k}", r) for r in range(repeats) for k in range(keys)]

    def submit(item):
        key, _ = item
        response = stack.http.post("/v1/jobs", json=FAULT_JOB, headers={"Idempotency-Key": key})
        return key, response.status_code, response.json().get("id")

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(submit, requests))
    by_key: dict[str, set[str]] = {}
    for key, status, job_id in results:
        assert status in (200, 201), (key, status)
        by_key.setdefault(key, set()).add(job_id)
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    created = sum(status == 201 for _, status, _ in results)
    assert created == keys
    job_ids = {next(iter(ids)) for ids in by_key.values()}
    audit = stack.http.get("/v1/audit", params={"action": "job.submitted", "limit": 1000})
    submitted = {e["object_id"] for e in audit.json()["data"]}
    assert job_ids <= submitted

    # 50 concurrent cancels of one job: one cancellation in the audit log.
    target = next(iter(job_ids))
    with ThreadPoolExecutor(max_workers=16) as pool:
        cancels = list(pool.map(lambda _: stack.http.post(f"/v1/jobs/{target}/cancel"), range(50)))
    statuses = sorted({c.status_code for c in cancels})
    assert set(statuses) <= {202, 409} and 202 in statuses
    entries = stack.http.get(
        "/v1/audit", params={"object_id": target, "action": "job.cancel_requested"}
    ).json()["data"]
    assert len(entries) == 1, entries
    for job_id in job_ids - {target}:  # leave nothing queued for later tests
        stack.http.post(f"/v1/jobs/{job_id}/cancel")
    record(
        f"idempotency: {len(requests)} concurrent submissions over {keys} keys -> {keys} jobs "
        f"({created} created, {len(requests) - created} replays); 50 concurrent cancels -> "
        f"1 audit entry ({time.monotonic() - started:.0f} s)"
    )
