"""Webhooks over SQLite and Postgres: registration and its 422s, the outbox written when
a job ends, and deliveries to a real HTTP receiver on loopback (signed, retried with
backoff, refused when the address is forbidden at delivery time)."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.db import jobs, webhooks
from core.webhooks.delivery import deliver_due
from core.webhooks.signing import verify_signature
from tests.fixtures.api import make_job, make_settings

PUBLIC_URL = "https://93.184.216.34/hooks/obliviate"  # a public address literal: no DNS


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records what it is sent and answers with the
    next of ``codes`` (the last one repeats)."""

    def __init__(self, codes=(200,)):
        self.codes = list(codes)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                code = receiver.codes.pop(0) if len(receiver.codes) > 1 else receiver.codes[0]
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host="127.0.0.1") -> str:
        return f"http://{host}:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receivers = []

    def start(codes=(200,)):
        receivers.append(Receiver(codes))
        return receivers[-1]

    yield start
    for each in receivers:
        each.close()


@pytest.fixture
def private_settings(tmp_path, database_url):
    """Loopback webhooks allowed (the receiver is on 127.0.0.1), fast retries."""
    return make_settings(
        tmp_path / "home", database_url, webhook_allow_private=True, webhook_backoff_s=0.05
    )


@pytest.fixture
def private_client(private_settings):
    with TestClient(create_app(private_settings)) as test_client:
        yield test_client


def error_of(response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


def end_job(session_factory, status="succeeded", **spec):
    with session_factory() as session:
        job = make_job(session, **spec)
        attempt = jobs.claim_job(session, job.id, "worker-a").attempts
        error = {"code": "boom", "message": "it broke"} if status == "failed" else None
        assert jobs.finish_job(session, job.id, status, error, attempt=attempt) == status
    return job.id


def deliveries(client, webhook_id) -> list[dict]:
    response = client.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def register(client, url, events=("job.succeeded",)) -> dict:
    response = client.post("/v1/webhooks", json={"url": url, "events": list(events)})
    assert response.status_code == 201, response.text
    return response.json()


def test_register_list_get_and_disable(client):
    created = client.post(
        "/v1/webhooks",
        json={"url": PUBLIC_URL, "events": ["job.failed", "job.succeeded"], "description": "ops"},
    )
    assert created.status_code == 201, created.text
    webhook = created.json()
    assert webhook["id"].startswith("wh_") and webhook["object"] == "webhook"
    assert webhook["secret"].startswith("whsec_") and len(webhook["secret"]) > 40
    assert webhook["active"] and webhook["events"] == ["job.failed", "job.succeeded"]
    assert created.headers["Location"] == f"/v1/webhooks/{webhook['id']}"

    # The secret is shown once: never again.
    shown = client.get(f"/v1/webhooks/{webhook['id']}").json()
    assert "secret" not in shown and shown["url"] == PUBLIC_URL
    second = register(client, PUBLIC_URL, ["deletion_request.fulfilled"])
    listed = client.get("/v1/webhooks", params={"limit": 1}).json()
    assert [item["id"] for item in listed["data"]] == [second["id"]] and listed["has_more"]
    rest = client.get("/v1/webhooks", params={"after": listed["last_id"]}).json()
    assert [item["id"] for item in rest["data"]] == [webhook["id"]] and not rest["has_more"]
    assert all("secret" not in item for item in listed["data"] + rest["data"])

    disabled = client.delete(f"/v1/webhooks/{webhook['id']}")
    assert disabled.status_code == 200 and not disabled.json()["active"]
    assert disabled.json()["disabled_at"] is not None
    assert client.delete(f"/v1/webhooks/{webhook['id']}").status_code == 200  # idempotent
    assert deliveries(client, webhook["id"]) == []
    for path in ("/v1/webhooks/wh_nope", "/v1/webhooks/job_123/deliveries"):
        assert error_of(client.get(path))[:2] == (404, "webhook_not_found")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"url": "ftp://93.184.216.34/x", "events": ["job.failed"]}, "invalid_webhook_url", "url"),
        ({"url": "file:///etc/passwd", "events": ["job.failed"]}, "invalid_webhook_url", "url"),
        ({"url": "https://u:p@93.184.216.34/", "events": ["job.failed"]}, "invalid_webhook_url", "url"),
        ({"url": "http://127.0.0.1:8000/", "events": ["job.failed"]}, "forbidden_webhook_url", "url"),
        ({"url": "http://localhost/hook", "events": ["job.failed"]}, "forbidden_webhook_url", "url"),
        ({"url": "http://10.0.0.7/hook", "events": ["job.failed"]}, "forbidden_webhook_url", "url"),
        ({"url": "http://169.254.169.254/", "events": ["job.failed"]}, "forbidden_webhook_url", "url"),
        ({"url": "http://[::1]/hook", "events": ["job.failed"]}, "invalid_webhook_url", "url"),
        ({"url": "http://a:70000/", "events": ["job.failed"]}, "invalid_webhook_url", "url"),
        ({"url": "http://no-such-host.invalid/", "events": ["job.failed"]}, "unresolvable_webhook_url", "url"),
        ({"url": "http://0.0.0.0/hook", "events": ["job.failed"]}, "forbidden_webhook_url", "url"),
        ({"url": PUBLIC_URL, "events": ["job.exploded"]}, "unknown_event", "events.0"),
        ({"url": PUBLIC_URL, "events": []}, "invalid_value", "events"),
        ({"url": PUBLIC_URL}, "missing_field", "events"),
        ({"url": PUBLIC_URL, "events": ["job.failed"], "x": 1}, "unknown_field", "x"),
    ],
)  # fmt: skip
def test_bad_registrations_are_422_naming_the_field(client, body, code, param):
    assert error_of(client.post("/v1/webhooks", json=body)) == (422, code, param)
    assert client.get("/v1/webhooks").json()["data"] == []


def test_a_signed_job_succeeded_delivery_reaches_the_receiver(
    private_client, private_settings, session_factory, receiver
):
    endpoint = receiver()
    webhook = register(private_client, endpoint.url(), ["job.succeeded", "job.failed"])
    other = register(private_client, endpoint.url(), ["deletion_request.fulfilled"])
    job_id = end_job(session_factory, "succeeded")

    # The outbox row was written with the job's end, before anything was sent.
    [pending] = deliveries(private_client, webhook["id"])
    assert pending["status"] == "pending" and pending["event"] == "job.succeeded"
    assert deliveries(private_client, other["id"]) == []  # not subscribed

    assert deliver_due(session_factory, private_settings) == 1
    [request] = endpoint.requests
    headers = request["headers"]
    assert headers["Obliviate-Event"] == "job.succeeded"
    assert headers["Obliviate-Delivery"] == pending["id"]
    assert verify_signature(webhook["secret"], headers["Obliviate-Signature"], request["body"], 60)
    assert not verify_signature(
        other["secret"], headers["Obliviate-Signature"], request["body"], 60
    )
    event = json.loads(request["body"])
    assert event["type"] == "job.succeeded" and event["id"].startswith("evt_")
    assert event["data"]["job"]["id"] == job_id and event["data"]["job"]["status"] == "succeeded"

    [done] = deliveries(private_client, webhook["id"])
    assert done["status"] == "delivered" and done["attempts"] == 1
    assert done["last_status_code"] == 200 and done["delivered_at"] is not None
    assert deliver_due(session_factory, private_settings) == 0  # nothing sent twice


def test_a_receiver_that_fails_twice_gets_it_on_the_third_attempt(
    private_client, private_settings, session_factory, receiver
):
    endpoint = receiver(codes=(500, 500, 200))
    webhook = register(private_client, endpoint.url(), ["job.failed"])
    end_job(session_factory, "failed")

    deadline = time.monotonic() + 10
    while len(endpoint.requests) < 3 and time.monotonic() < deadline:
        deliver_due(session_factory, private_settings)
        time.sleep(0.02)
    [delivery] = deliveries(private_client, webhook["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    log = delivery["attempt_log"]
    assert [entry["status_code"] for entry in log] == [500, 500, 200]
    assert [entry["attempt"] for entry in log] == [1, 2, 3]
    assert "HTTP 500" in log[0]["error"] and log[2]["error"] is None
    # Exponential backoff: the second wait is about twice the first (0.05 s, 0.1 s).
    at = [datetime.fromisoformat(entry["at"]) for entry in log]
    assert (at[1] - at[0]).total_seconds() >= 0.05
    assert (at[2] - at[1]).total_seconds() >= 0.1
    bodies = {request["body"] for request in endpoint.requests}
    assert len({json.loads(body)["id"] for body in bodies}) == 1  # the same event each time


def test_retries_stop_at_max_attempts(private_settings, session_factory, private_client, receiver):
    endpoint = receiver(codes=(503,))
    webhook = register(private_client, endpoint.url(), ["job.cancelled"])
    with session_factory() as session:  # a queued job cancelled at once ends, too
        job = make_job(session)
        jobs.request_cancel(session, job.id, principal="anonymous")
        session.commit()
    settings = private_settings.model_copy(update={"webhook_max_attempts": 2})
    for _ in range(50):
        deliver_due(session_factory, settings)
        if deliveries(private_client, webhook["id"])[0]["status"] != "pending":
            break
        time.sleep(0.03)
    [delivery] = deliveries(private_client, webhook["id"])
    assert delivery["status"] == "failed" and delivery["attempts"] == 2
    assert delivery["last_status_code"] == 503 and len(endpoint.requests) == 2


def test_an_address_forbidden_at_delivery_time_is_refused_and_logged(
    private_client, private_settings, session_factory, receiver
):
    """Registered while allowed (as if the name resolved to a public address then);
    at delivery the name resolves to loopback, which is now forbidden: nothing is
    sent and the attempt says why (DNS rebinding)."""
    endpoint = receiver()
    webhook = register(private_client, endpoint.url(host="localhost"), ["job.succeeded"])
    end_job(session_factory, "succeeded")
    strict = private_settings.model_copy(update={"webhook_allow_private": False})

    assert deliver_due(session_factory, strict) == 1
    assert endpoint.requests == []
    [delivery] = deliveries(private_client, webhook["id"])
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    assert delivery["last_status_code"] is None
    error = delivery["last_error"]
    assert "refused" in error and ("127.0.0.1" in error or "::1" in error)


def test_deletion_request_events_when_its_job_ends(
    private_client, private_settings, session_factory, receiver
):
    endpoint = receiver()
    webhook = register(
        private_client,
        endpoint.url(),
        ["deletion_request.fulfilled", "deletion_request.needs_attention"],
    )
    request = private_client.post(
        "/v1/deletion-requests", json={"subject": "Jane Roe", "external_ref": "T-1"}
    ).json()
    end_job(session_factory, "failed", deletion_request=request["id"])

    deliver_due(session_factory, private_settings)
    [sent] = endpoint.requests
    assert sent["headers"]["Obliviate-Event"] == "deletion_request.needs_attention"
    event = json.loads(sent["body"])["data"]["deletion_request"]
    assert event["id"] == request["id"] and event["status"] == "needs_attention"
    assert event["external_ref"] == "T-1" and "Jane Roe" not in sent["body"].decode()
    assert deliveries(private_client, webhook["id"])[0]["status"] == "delivered"


def test_disabling_stops_pending_deliveries(
    private_client, private_settings, session_factory, receiver
):
    endpoint = receiver()
    webhook = register(private_client, endpoint.url(), ["job.succeeded"])
    end_job(session_factory, "succeeded")
    private_client.delete(f"/v1/webhooks/{webhook['id']}")
    end_job(session_factory, "succeeded")  # after disabling: no delivery at all

    assert deliver_due(session_factory, private_settings) == 0
    assert endpoint.requests == []
    [delivery] = deliveries(private_client, webhook["id"])
    assert delivery["status"] == "failed" and "disabled" in delivery["last_error"]


def test_a_job_the_reaper_fails_is_an_event_too(private_client, session_factory):
    webhook = register(private_client, PUBLIC_URL, ["job.failed"])
    with session_factory() as session:
        job = make_job(session)
        jobs.claim_job(session, job.id, "worker-a")
        later = jobs.utcnow() + timedelta(hours=1)  # its heartbeat is an hour old by then
        reaped = jobs.reap_stale_jobs(
            session, now=later, stale_after_s=60, requeue_queued_after_s=60, max_attempts=1
        )
        session.commit()
    assert reaped == []
    [delivery] = deliveries(private_client, webhook["id"])
    assert delivery["event"] == "job.failed" and delivery["status"] == "pending"
    failed = delivery["payload"]["data"]["job"]
    assert failed["id"] == job.id and failed["error"]["code"] == "worker_lost"


def test_a_due_delivery_is_leased_to_one_sender(private_client, session_factory):
    register(private_client, PUBLIC_URL, ["job.succeeded"])
    end_job(session_factory, "succeeded")
    now = jobs.utcnow() + timedelta(seconds=1)
    with session_factory() as first, session_factory() as second:
        taken = webhooks.claim_due(first, lease_s=60, now=now)
        assert len(taken) == 1 and taken[0].url == PUBLIC_URL
        assert webhooks.claim_due(second, lease_s=60, now=now) == []
        # A sender that died mid-attempt: the delivery comes due again after the lease.
        later = now + timedelta(seconds=61)
        assert [d.id for d in webhooks.claim_due(second, lease_s=60, now=later)] == [taken[0].id]


def test_deliveries_are_paged_newest_first(private_client, session_factory):
    webhook = register(private_client, PUBLIC_URL, ["job.succeeded", "job.failed"])
    first = end_job(session_factory, "succeeded")
    second = end_job(session_factory, "failed")
    path = f"/v1/webhooks/{webhook['id']}/deliveries"
    page = private_client.get(path, params={"limit": 1}).json()
    assert [d["payload"]["data"]["job"]["id"] for d in page["data"]] == [second]
    assert page["has_more"] and page["data"][0]["event"] == "job.failed"
    rest = private_client.get(path, params={"limit": 1, "after": page["last_id"]}).json()
    assert [d["payload"]["data"]["job"]["id"] for d in rest["data"]] == [first]
    assert not rest["has_more"]
    assert private_client.get(path, params={"after": "not an id"}).status_code == 422


def test_a_receiver_that_is_down_is_logged_and_retried(
    private_client, private_settings, session_factory
):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    webhook = register(private_client, f"http://127.0.0.1:{port}/hook", ["job.succeeded"])
    end_job(session_factory, "succeeded")
    assert deliver_due(session_factory, private_settings) == 1
    [delivery] = deliveries(private_client, webhook["id"])
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    assert delivery["last_status_code"] is None and "ConnectError" in delivery["last_error"]
    assert delivery["next_attempt_at"] is not None


def test_the_python_client(live_server, session_factory):
    from obliviate_client import ApiError, Client

    with Client(live_server.url) as client:
        created = client.webhooks.create(PUBLIC_URL, ["job.succeeded"], description="ops")
        assert created.secret.startswith("whsec_") and created.active
        assert client.webhooks.get(created.id).secret is None
        assert [webhook.id for webhook in client.webhooks.list()] == [created.id]
        end_job(session_factory, "succeeded")
        [delivery] = client.webhooks.deliveries(created.id)
        assert delivery.event == "job.succeeded" and delivery.status == "pending"
        assert not client.webhooks.disable(created.id).active
        with pytest.raises(ApiError) as refused:
            client.webhooks.create("http://127.0.0.1/hook", ["job.failed"])
        assert refused.value.code == "forbidden_webhook_url"
