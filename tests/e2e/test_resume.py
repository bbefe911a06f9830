"""Pause, resume and a killed worker, over HTTP on the production stack (Postgres, Redis,
SeaweedFS): a run that stopped and went on ends with the weights of one that never
stopped (same seed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest

from cli.serve import worker_command
from tests.e2e.test_service import (
    INSTALL_DEMO,
    TERMINAL,
    Service,
    _base_env,
    _reset_postgres,
    _seed_demo_cache,
)

pytestmark = pytest.mark.slow

# Long enough to stop in the middle (30 epochs of the tiny demo's 16 forget records in
# blocks of 4: 120 steps), with a saved state every 4 steps and no early stop, so two
# runs of it can be compared step for step.
LONG_JOB = {
    "model": "demo-target",
    "forget": "ds_demo_forget10",
    "retain": "ds_demo_retain90",
    "method": "simnpo",
    "hyperparameters": {
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "precision": "fp32",
    },
    "evaluation": {"enabled": False, "holdout": "ds_demo_holdout"},
    "target": {
        "max_epochs": 30,
        "eval_every_steps": 4,
        "stop_when_met": False,
        "relearning": False,
    },
    "seed": 7,
}


@pytest.fixture
def service(tmp_path, tiny_demo, postgres_url, redis_url, s3_server):
    home = tmp_path / "home"
    _seed_demo_cache(home, tiny_demo)
    env = _base_env(
        home,
        database_url=postgres_url,
        broker_url=redis_url,
        storage_url=f"s3://obliviate-e2e/{uuid.uuid4().hex}",
        s3_endpoint_url=s3_server,
        stale_after_s="6",
        reaper_interval_s="2",
        requeue_queued_after_s="30",
    )
    _reset_postgres(postgres_url)
    service = Service(env, home)
    subprocess.run([sys.executable, "-c", INSTALL_DEMO], env=env, check=True)
    service.spawn(
        "api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(service.port),
        ],
    )
    service.worker = service.spawn("worker", worker_command())
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def _final_weights(service: Service, job_id: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    http = service.http
    checkpoint = next(
        c for c in http.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"] if c["name"] == "final"
    )
    response = http.get(f"/v1/jobs/{job_id}/checkpoints/{checkpoint['id']}/files/model.safetensors")
    assert response.status_code == 200
    return load(response.content)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _events(service: Service, job_id: str) -> list[dict]:
    return service.http.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def test_pause_resume_and_a_killed_worker_end_with_the_uninterrupted_weights(service):
    http = service.http
    reference = http.post("/v1/jobs", json=LONG_JOB).json()["id"]
    job = service.wait_for(reference, lambda j: j["status"] in TERMINAL, timeout=600)
    assert job["status"] == "succeeded", f"{job}\n{service.tail_logs()}"
    assert job["verdict"] is not None and "target_met" in job["verdict"]
    points = http.get(f"/v1/jobs/{reference}/evaluations", params={"limit": 1000}).json()["data"]
    assert [p["step"] for p in points] == list(range(4, 121, 4))
    expected = _final_weights(service, reference)

    # Pause in the middle, then resume.
    paused = http.post("/v1/jobs", json=LONG_JOB).json()["id"]
    service.wait_for(paused, lambda j: j["status"] == "running" and j["progress"]["step"] >= 30)
    response = http.post(f"/v1/jobs/{paused}/pause")
    assert response.status_code == 202 and response.json()["status"] in ("pausing", "paused")
    job = service.wait_for(paused, lambda j: j["status"] == "paused", timeout=120)
    stopped_at = job["progress"]["step"]
    assert http.post(f"/v1/jobs/{paused}/pause").status_code == 202  # pausing twice: no-op
    assert http.post(f"/v1/jobs/{paused}/resume").json()["status"] == "queued"
    job = service.wait_for(paused, lambda j: j["status"] in TERMINAL, timeout=600)
    assert job["status"] == "succeeded", f"{job}\n{service.tail_logs()}"
    messages = [e["message"] for e in _events(service, paused)]
    assert any(f"paused at step {stopped_at}" in m for m in messages), messages
    assert any(f"resumes from step {stopped_at}" in m for m in messages), messages
    _assert_same_weights(_final_weights(service, paused), expected)

    # kill -9 of the worker mid-job: the reaper re-queues the job and a new worker
    # resumes it from its last evaluation point.
    killed = http.post("/v1/jobs", json=LONG_JOB).json()["id"]
    service.wait_for(killed, lambda j: j["status"] == "running" and j["progress"]["step"] >= 50)
    os.killpg(service.worker.pid, signal.SIGKILL)
    service.worker.wait()
    service.worker = service.spawn("worker-2", worker_command())
    job = service.wait_for(killed, lambda j: j["status"] in TERMINAL, timeout=600)
    assert job["status"] == "succeeded", f"{job}\n{service.tail_logs()}"
    assert job["attempts"] == 2
    messages = [e["message"] for e in _events(service, killed)]
    resumed = [m for m in messages if "attempt 2 resumes from step" in m]
    assert resumed, messages
    assert int(resumed[0].rsplit(" ", 1)[-1]) >= 48  # the last point saved before the kill
    _assert_same_weights(_final_weights(service, killed), expected)
    metrics = http.get(f"/v1/jobs/{killed}/metrics", params={"limit": 1000}).json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, 121))  # no step twice
