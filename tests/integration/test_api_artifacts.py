"""Checkpoints and reports: rows written as the worker writes them, files in the store,
read back over HTTP."""

from __future__ import annotations

import hashlib
import json

import pytest

from core.db import artifacts
from core.db import jobs as jobs_repo
from core.db.model_registry import register_model as register_model_row
from core.storage import open_store
from tests.fixtures.api import job_body, register_model, upload_dataset


def error_of(response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


@pytest.fixture
def finished_job(client, api_settings, session_factory):
    """A succeeded job with a stored checkpoint, report and plot."""
    register_model(client)
    job_id = client.post("/v1/jobs", json=job_body(upload_dataset(client))).json()["id"]
    store = open_store(api_settings.storage_url)
    prefix = f"jobs/{job_id}/checkpoints/final"
    contents = {"model.safetensors": b"\x00weights" * 1000, "config.json": b'{"a": 1}'}
    files = []
    for path, data in contents.items():
        store.put_bytes(f"{prefix}/{path}", data)
        files.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = json.dumps(files).encode()
    store.put_bytes(f"{prefix}/manifest.json", manifest)
    report_prefix = f"jobs/{job_id}/report"
    report = {"schema_version": 1, "summary": {"forget_quality": 0.9}}
    store.put_bytes(f"{report_prefix}/report.json", json.dumps(report).encode())
    store.put_bytes(f"{report_prefix}/report.html", b"<html>report</html>")
    store.put_bytes(f"{report_prefix}/forget_probability.png", b"\x89PNG fake")

    with session_factory() as session:
        jobs_repo.claim_job(session, job_id, "w")
        artifacts.add_checkpoint(
            session,
            job_id,
            "final",
            12,
            prefix,
            files,
            hashlib.sha256(manifest).hexdigest(),
            {"forget_loss": 0.1},
        )
        output = register_model_row(
            session, f"{job_id}-output", store.uri(prefix), "job_output", job_id
        )
        session.commit()
        # Before the report exists:
        assert error_of(client.get(f"/v1/jobs/{job_id}/report")) == (
            409,
            "report_not_ready",
            "job_id",
        )
        artifacts.save_report(
            session,
            job_id,
            1,
            report["summary"],
            f"{report_prefix}/report.json",
            f"{report_prefix}/report.html",
        )
        session.commit()
        jobs_repo.finish_job(session, job_id, "succeeded", output_model_id=output.id)
    return job_id, contents, report


def test_checkpoints_list_and_download(client, finished_job):
    job_id, contents, _ = finished_job
    listing = client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    [checkpoint] = listing["data"]
    assert checkpoint["name"] == "final" and checkpoint["step"] == 12
    assert (
        checkpoint["metrics"] == {"forget_loss": 0.1} and len(checkpoint["manifest_sha256"]) == 64
    )
    by_path = {item["path"]: item for item in checkpoint["files"]}
    assert set(by_path) == set(contents)

    for path, data in contents.items():
        response = client.get(by_path[path]["download_url"])
        assert response.status_code == 200 and response.content == data
        assert response.headers["content-length"] == str(len(data))
        assert hashlib.sha256(response.content).hexdigest() == by_path[path]["sha256"]
    by_name = client.get(f"/v1/jobs/{job_id}/checkpoints/final/files/config.json")
    assert by_name.content == contents["config.json"]

    base = f"/v1/jobs/{job_id}/checkpoints/{checkpoint['id']}/files"
    for path in ("manifest.json", "..%2F..%2Fetc%2Fpasswd", "missing.bin"):
        assert error_of(client.get(f"{base}/{path}"))[:2] == (404, "file_not_found")
    missing = client.get(f"/v1/jobs/{job_id}/checkpoints/step-1/files/config.json")
    assert error_of(missing) == (404, "checkpoint_not_found", "checkpoint_id")


def test_report_json_html_and_plots(client, finished_job):
    job_id, _, report = finished_job
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["report_available"] is True
    assert job["output_model"] == f"{job_id}-output" and job["progress"]["fraction"] == 1.0
    assert client.get(f"/v1/jobs/{job_id}/report").json() == report
    html = client.get(f"/v1/jobs/{job_id}/report.html")
    assert html.headers["content-type"].startswith("text/html") and b"report" in html.content
    plot = client.get(f"/v1/jobs/{job_id}/report/files/forget_probability.png")
    assert plot.headers["content-type"] == "image/png" and plot.content.startswith(b"\x89PNG")
    for name in ("report.json", "nope.png", "..report.png"):
        assert error_of(client.get(f"/v1/jobs/{job_id}/report/files/{name}"))[:2] == (
            404,
            "file_not_found",
        )
    # The output is a model the next job can start from.
    names = [m["name"] for m in client.get("/v1/models").json()["data"]]
    assert f"{job_id}-output" in names
