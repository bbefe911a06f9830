"""Forgetting certificates over HTTP on SQLite and Postgres: issued once a request is
fulfilled, signed with the key the well-known endpoint serves, the same document on
every read, audited, and checked offline by ``obliviate verify`` (which names what was
altered)."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from cli.main import app as cli
from core.db import artifacts
from core.db import jobs as jobs_repo
from core.db.model_registry import register_model as register_model_row
from core.models.checkpoint import folder_digest
from tests.fixtures.api import make_job
from tests.integration.test_api_deletion_requests import FORGOTTEN, SUMMARY, error_of

WEIGHTS = b"unlearned weights"
BASE_DIGEST = "b" * 64


def fulfil(client, session_factory) -> tuple[str, str]:
    """A request fulfilled by a job whose published checkpoint is in the object store."""
    request_id = client.post("/v1/deletion-requests", json={"subject": "Jane Roe"}).json()["id"]
    store = client.app.state.resources.store
    with session_factory() as session:
        job_id = make_job(session, deletion_request=request_id).id
        jobs_repo.claim_job(session, job_id, "w")
        prefix = f"jobs/{job_id}/checkpoints/final"
        manifest = json.dumps({"base_model_sha256": BASE_DIGEST}).encode()
        store.put_bytes(f"{prefix}/model.safetensors", WEIGHTS)
        store.put_bytes(f"{prefix}/manifest.json", manifest)
        files = [
            {
                "path": "model.safetensors",
                "size": len(WEIGHTS),
                "sha256": hashlib.sha256(WEIGHTS).hexdigest(),
            },
            {
                "path": "manifest.json",
                "size": len(manifest),
                "sha256": hashlib.sha256(manifest).hexdigest(),
            },
        ]
        artifacts.add_checkpoint(session, job_id, "final", 12, prefix, files, files[-1]["sha256"])
        artifacts.save_report(session, job_id, "1.0", SUMMARY, f"jobs/{job_id}/r.json", None)
        model = register_model_row(session, f"out-{job_id}", "s3://b/o", "job_output", job_id)
        session.commit()
        jobs_repo.finish_job(
            session, job_id, "succeeded", output_model_id=model.id, verdict=FORGOTTEN
        )
    return request_id, job_id


def test_a_fulfilled_request_gets_one_signed_certificate(client, session_factory, tmp_path):
    request_id, job_id = fulfil(client, session_factory)
    url = client.get(f"/v1/deletion-requests/{request_id}").json()["certificate_url"]
    response = client.get(url)
    assert response.status_code == 200, response.text
    document = response.json()
    body = document["certificate"]
    assert body["deletion_request"]["id"] == request_id
    assert body["deletion_request"]["subject"] == "Jane Roe"
    assert body["job"]["id"] == job_id and body["job"]["method"] == "npo"
    assert body["verdict"]["status"] == "forgotten"
    assert body["evidence"]["forget_quality"] == SUMMARY["forget_quality"]
    assert body["model_before"]["sha256"] == BASE_DIGEST
    weights = {
        "path": "model.safetensors",
        "size": len(WEIGHTS),
        "sha256": hashlib.sha256(WEIGHTS).hexdigest(),
    }
    assert body["model_after"]["sha256"] == folder_digest([weights])
    assert body["model_after"]["files"][0] == weights
    assert body["data"]["forget"]["sha256"] and body["data"]["forget"]["records"] > 0
    actions = [(e["object_id"], e["action"]) for e in body["audit"]]
    assert (request_id, "deletion_request.created") in actions
    assert actions[-1] == (request_id, "certificate.issued")

    # The same document every time, and issuing was audited once.
    assert client.get(url).json() == document
    issued = client.get(
        "/v1/audit", params={"object_id": request_id, "action": "certificate.issued"}
    ).json()["data"]
    assert len(issued) == 1
    assert issued[0]["data"]["certificate_id"] == body["certificate_id"]

    key = client.get("/.well-known/obliviate/signing-key").json()
    assert key["key_id"] == document["signature"]["key_id"]
    page = client.get(f"{url}.html")
    assert page.status_code == 200 and "Signature valid" in page.text

    # Offline: the CLI checks it against the pinned key and the downloaded model.
    (tmp_path / "cert.json").write_text(json.dumps(document))
    (tmp_path / "key.json").write_text(json.dumps(key))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(WEIGHTS)
    args = ["verify", str(tmp_path / "cert.json"), "--public-key", str(tmp_path / "key.json")]
    result = CliRunner().invoke(cli, [*args, "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "model files" in result.output

    (model_dir / "model.safetensors").write_bytes(b"other weights")
    result = CliRunner().invoke(cli, [*args, "--model", str(model_dir)])
    assert result.exit_code == 1 and "model file model.safetensors differs" in result.output

    document["certificate"]["verdict"]["status"] = "forgotten!"
    (tmp_path / "cert.json").write_text(json.dumps(document))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "field 'verdict' differs from what was signed" in result.output


def test_no_certificate_before_fulfilment_and_none_for_unknown_requests(client):
    request_id = client.post("/v1/deletion-requests", json={"subject": "x"}).json()["id"]
    response = client.get(f"/v1/deletion-requests/{request_id}/certificate")
    assert error_of(response) == (409, "certificate_not_available", "deletion_request_id")
    assert "is open" in response.json()["error"]["message"]
    missing = client.get("/v1/deletion-requests/dr_00000000000000000000000000/certificate")
    assert error_of(missing) == (404, "deletion_request_not_found", "deletion_request_id")
