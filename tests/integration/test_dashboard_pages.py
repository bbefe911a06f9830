"""The dashboard's pages and sign-in, server side: what each page shows from the
database, that the sign-in cookie opens reads and never writes, and that the API
reference pages load nothing from elsewhere. (The browser test drives them live.)"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from core.db import jobs
from core.db.artifacts import add_checkpoint, save_report
from core.db.audit import add_audit_entry
from core.db.deletion_requests import create_deletion_request
from tests.fixtures.api import make_job, make_settings

KEY = "dashboard-test-key"


@pytest.fixture
def signed_out(tmp_path, database_url):
    from api.main import create_app

    settings = make_settings(tmp_path / "home", database_url, api_keys=[KEY])
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def signed_in(signed_out):
    response = signed_out.post(
        "/sign-in", data={"api_key": KEY, "next": "/audit"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/audit"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    return signed_out


def test_pages_ask_for_a_sign_in_and_refuse_a_wrong_key(signed_out):
    for path in ("/", "/jobs/job_01x", "/deletion-requests", "/audit"):
        response = signed_out.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/sign-in?next={path}"
    wrong = signed_out.post("/sign-in", data={"api_key": "nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    # Never an open redirect.
    outside = signed_out.post(
        "/sign-in", data={"api_key": KEY, "next": "//evil.example/"}, follow_redirects=False
    )
    assert outside.headers["location"] == "/"


def test_the_cookie_opens_reads_but_never_writes(signed_in):
    assert signed_in.get("/v1/jobs").status_code == 200
    refused = signed_in.post("/v1/deletion-requests", json={"subject": "x"})
    assert refused.status_code == 401
    signed_in.post("/sign-out")
    assert signed_in.get("/v1/jobs").status_code == 401


def test_job_pages_show_state_verdict_and_downloads(signed_in, session_factory):
    with session_factory() as session:
        request = create_deletion_request(session, subject="Jane Roe", external_ref="DSR-9").request
        session.commit()
        job = make_job(session, deletion_request=request.id)
        add_audit_entry(
            session,
            principal="key:abc",
            action="job.submitted",
            object_type="job",
            object_id=job.id,
        )
        session.commit()
        attempt = jobs.claim_job(session, job.id, "worker-1").attempts
        verdict = {
            "status": "not_forgotten",
            "forgotten": False,
            "reason": "Not forgotten: membership inference still detects the forget set.",
            "checks": [
                {
                    "name": "privleak",
                    "label": "PrivLeak",
                    "value": -28.0,
                    "threshold": 10.0,
                    "passed": False,
                    "description": "Membership inference detects it (over-unlearned).",
                }
            ],
        }
        add_checkpoint(
            session,
            job.id,
            "final",
            4,
            f"jobs/{job.id}/checkpoints/final",
            [{"path": "model.safetensors", "size": 2048, "sha256": "ab" * 32}],
            manifest_sha256="cd" * 32,
        )
        save_report(
            session,
            job.id,
            "1.2",
            {
                "verdict": verdict,
                "privleak": -28.0,
                "forget_probability": 0.1,
                "forget_quality": 0.41,
                "forget_quality_oracles": 3,
                "next_steps": [
                    {
                        "reason": "membership",
                        "text": "Forget more gently, with half the learning rate.",
                        "spec": {"hyperparameters": {"learning_rate": 0.0005}},
                    }
                ],
            },
            json_key=f"jobs/{job.id}/report/report.json",
            html_key=f"jobs/{job.id}/report/report.html",
        )
        session.commit()
        jobs.finish_job(session, job.id, "succeeded", attempt=attempt)

    listing = signed_in.get("/")
    assert listing.status_code == 200 and f'data-job-id="{job.id}"' in listing.text
    assert "status-succeeded" in listing.text
    filtered = signed_in.get("/", params={"status": "failed"})
    assert job.id not in filtered.text and "match these filters" in filtered.text
    # The method filter offers every method a job may name, GUARD's guard jobs too.
    assert '<option value="guard">guard</option>' in listing.text
    guards = signed_in.get("/", params={"method": "guard"}).text
    assert '<option value="guard" selected>guard</option>' in guards and job.id not in guards

    page = signed_in.get(f"/jobs/{job.id}").text
    assert "Verdict: Not forgotten" in page and "-28.0" in page
    assert "What to try next" in page and "half the learning rate" in page
    assert '<code>{"hyperparameters": {"learning_rate": 0.0005}}</code>' in page
    assert f'href="/v1/jobs/{job.id}/report.html"' in page
    assert re.search(
        rf'href="/v1/jobs/{job.id}/checkpoints/ckpt_\w+/files/model.safetensors"', page
    )
    assert "key:abc" in page and f'href="/deletion-requests/{request.id}"' in page
    assert f'data-stream="/v1/jobs/{job.id}/stream"' in page
    assert signed_in.get(f"/jobs/{job.id}/outcome").text.count("Verdict: Not forgotten") == 1

    served = signed_in.get(f"/deletion-requests/{request.id}").text
    # A job that ran to the end without proof of forgetting does not fulfil it.
    assert "needs attention" in served and "Jane Roe" in served and "DSR-9" in served
    assert "No certificate until a job has verified" in served
    assert "Verdict: Not forgotten" in served and "Certificate" in served
    assert "0.41" in served and "against 3 retrains pooled" in served
    assert (
        signed_in.get("/deletion-requests", params={"status": "open"}).text.count(request.id) == 0
    )

    audit = signed_in.get("/audit", params={"object_id": job.id}).text
    assert "job.submitted" in audit and "job.finished" in audit

    missing = signed_in.get("/jobs/job_01doesnotexist")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]


def test_api_reference_pages_load_only_local_files(signed_out):
    for path in ("/docs", "/redoc"):
        response = signed_out.get(path)
        page = response.text
        # The browser may load from this server only (ReDoc's CDN logo is refused).
        assert "default-src 'self'" in response.headers["content-security-policy"]
        sources = re.findall(r'(?:src|href)=["\']([^"\']+)', page)
        assert sources and all(source.startswith("/") for source in sources), sources
        assert "cdn" not in page.lower() and "googleapis" not in page
        for source in sources:
            assert signed_out.get(source).status_code == 200, source
