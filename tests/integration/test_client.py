"""The Python client against a real server: typed objects that match the API's schemas,
retries that never do a create twice, lists that page on, and wait() on the stream."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from core.db import jobs
from obliviate_client import ApiError, AsyncClient, Client, models
from tests.fixtures.api import make_job


class LosesAnswers(httpx.BaseTransport):
    """A network that fails the way real ones do: the first ``drops`` requests reach the
    server but their answers are lost (a 502 from a proxy), and the next one is turned
    away with 429 and Retry-After; everything else passes through."""

    def __init__(self, drops: int):
        self.inner = httpx.HTTPTransport()
        self.drops = drops
        self.throttled = False
        self.seen: list[tuple[str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.headers.get("Idempotency-Key")))
        if self.drops:
            self.drops -= 1
            self.inner.handle_request(request).read()  # the server did it...
            return httpx.Response(502, request=request)  # ...but the answer is lost
        if not self.throttled:
            self.throttled = True
            return httpx.Response(429, headers={"Retry-After": "0"}, request=request)
        return self.inner.handle_request(request)


def test_a_create_retried_after_lost_answers_happens_once(live_server, session_factory):
    transport = LosesAnswers(drops=2)
    http = httpx.Client(base_url=live_server.url, transport=transport)
    with Client(live_server.url, http=http, backoff=0.01) as client:
        created = client.deletion_requests.create("everything about Jane Roe", external_ref="T-1")
        assert isinstance(created, models.DeletionRequest) and created.status == "open"
        keys = {key for method, key in transport.seen if method == "POST"}
        assert len(transport.seen) == 4 and len(keys) == 1  # one key across every retry
        assert [r.id for r in client.deletion_requests.list()] == [created.id]


def test_errors_carry_the_api_error_and_are_not_retried(live_server):
    with Client(live_server.url, backoff=0.01) as client:
        with pytest.raises(ApiError) as error:
            client.jobs.create({"model": "demo-target", "forget": "ds_missing", "method": "ga"})
        assert error.value.status == 422 and error.value.param == "forget"
        with pytest.raises(ApiError) as missing:
            client.jobs.get("job_01doesnotexist")
        assert missing.value.code == "job_not_found"


def test_the_client_lists_guard_among_the_methods(live_server):
    with Client(live_server.url, backoff=0.01) as client:
        listed = {method.name: method for method in client.methods.list()}
        assert listed["guard"].output == "guard" and listed["npo"].output == "weights"
        guard = client.methods.get("guard")
        assert guard == listed["guard"] and guard.defaults["holdout_fraction"] == 0.2
        assert "needs_attention" in guard.output_description
        with pytest.raises(ApiError) as missing:
            client.methods.get("nope")
        assert missing.value.code == "method_not_found"


def test_lists_page_on_and_wait_follows_the_stream(live_server, session_factory):
    with session_factory() as session:
        ids = [make_job(session).id for _ in range(5)]
        attempt = jobs.claim_job(session, ids[0], "worker-1").attempts
        jobs.add_metrics(session, ids[0], [{"step": s, "values": {"loss": 1 / s}} for s in (1, 2)])
        session.commit()
    with Client(live_server.url) as client:
        assert [job.id for job in client.jobs.list(page_size=2)] == ids[::-1]
        assert [m.step for m in client.jobs.metrics(ids[0])] == [1, 2]
        assert client.jobs.events(ids[0], after=0).__next__().type == "status"

        seen: list[str] = []

        def finish_later() -> None:
            with session_factory() as session:
                jobs.finish_job(session, ids[0], "succeeded", attempt=attempt)

        timer = threading.Timer(1.0, finish_later)
        timer.start()
        job = client.jobs.wait(ids[0], timeout=30, on_update=lambda m: seen.append(m.kind))
        timer.join()
        assert job.status == "succeeded" and isinstance(job, models.Job)
        assert seen[0] == "job" and seen[-1] == "end" and seen.count("metric") == 2

        async def from_asyncio() -> tuple[str, list[str]]:
            async with AsyncClient(live_server.url) as aclient:
                listed = [job.id async for job in aclient.jobs.list(page_size=2)]
                return (await aclient.jobs.wait(ids[0], timeout=30)).status, listed

        status, listed = asyncio.run(from_asyncio())
        assert status == "succeeded" and listed == ids[::-1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_client_models_have_the_servers_fields(api_settings):
    """The client mirrors the server's response schemas: every field the server sends is
    one the client types (and the client's extras are ones the server may add later)."""
    from api.main import create_app

    schemas = create_app(api_settings).openapi()["components"]["schemas"]
    pairs = {
        "JobObject": models.Job,
        "EventObject": models.Event,
        "MetricObject": models.Metric,
        "CheckpointObject": models.Checkpoint,
        "CheckpointFile": models.CheckpointFile,
        "Progress": models.Progress,
        "DatasetObject": models.Dataset,
        "ModelObject": models.Model,
        "MethodObject": models.Method,
        "DeletionRequestObject": models.DeletionRequest,
        "LinkedJob": models.LinkedJob,
        "DeletionBatchObject": models.DeletionBatch,
        "BatchCost": models.BatchCost,
        "Evidence": models.Evidence,
        "AuditEntryObject": models.AuditEntry,
        "AuditCheckpointObject": models.AuditCheckpoint,
        "ChainCheckObject": models.ChainCheck,
        "ErrorObject": models.ErrorObject,
        "WebhookObject": models.Webhook,
        "WebhookDeliveryObject": models.WebhookDelivery,
        "DeliveryAttempt": models.DeliveryAttempt,
        "KeyObject": models.ApiKey,
    }
    #: fields the client knows are coming (issue 8), that only stream items carry, or
    #: that only the answer to a create carries
    ahead = {"verdict", "id", "job_id", "secret", "key"}
    for server_name, client_model in pairs.items():
        server = set(schemas[server_name]["properties"])
        client = set(client_model.model_fields)
        assert server <= client, f"{client_model.__name__} lacks {server - client}"
        assert client - server <= ahead, f"{client_model.__name__} has {client - server}"


def test_an_admin_key_manages_its_tenants_keys(live_server, database_url):
    from tests.integration.test_api_tenancy import make_key

    _, admin = make_key(database_url, "acme", "admin")
    client = Client(live_server.url, api_key=admin)
    made = client.keys.create("auditor", name="privacy office")
    assert made.key and made.key.startswith(made.prefix) and made.tenant == "acme"
    assert made.id in [key.id for key in client.keys.list()]
    # The keyring remembers a lookup for seconds; a revoke through the API drops it now.
    auditor = Client(live_server.url, api_key=made.key)
    assert list(auditor.audit.list()) is not None
    check = auditor.audit.verify()
    assert check.valid and check.entries >= 1, check
    assert isinstance(list(auditor.audit.checkpoints()), list)
    assert client.keys.revoke(made.id).revoked_at is not None
    with pytest.raises(ApiError) as denied:
        Client(live_server.url, api_key=made.key).jobs.get("job_01aaaaaaaaaaaaaaaaaaaaaaaa")
    assert denied.value.status == 401
