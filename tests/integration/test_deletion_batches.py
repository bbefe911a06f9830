"""Batched deletion requests on SQLite and Postgres, through the real app and the real
worker runner training the tiny demo model: requests for the same model and settings
within the window become one job over the union of their records, each request gets
its own evidence and certificate; a later request goes to the next batch; different
models, settings or tenants are never merged; two batchers racing make one job; bad
input names its field."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.main import create_app
from api.services import deletion_requests as request_service
from core.datasets import fetch_dataset_file, record_dataset, store_dataset_file
from core.db.datasets import get_dataset
from core.db.tables import DeletionBatch, Job, JobDeletionRequest
from core.db.types import utcnow
from core.deletion_batches import dispatch_batch
from core.envelope import load_or_create_master_key
from core.queue import make_celery
from core.reaper import ReaperThread
from core.tenancy import tenant_bound
from tests.fixtures.api import jsonl
from tests.integration.test_api_deletion_requests import (
    FORGOTTEN,
    NOT_FORGOTTEN,
    error_of,
    finish_succeeded,
)
from tests.integration.test_worker_runner import store, worker_settings  # noqa: F401
from worker.runner import JobRunner

HOLDOUT = "ds_demo_holdout"
#: a quick recipe: one epoch, no target loop, no generation (the verdict still runs)
JOB = {
    "method": "ga",
    "hyperparameters": {
        "epochs": 1,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "precision": "fp32",
    },
    "target": None,
    "evaluation": {"generate": False, "holdout": HOLDOUT, "max_samples": 16},
}


def with_window(settings, seconds: float):
    return settings.model_copy(update={"deletion_batch_window_seconds": seconds})


@pytest.fixture
def app_client(worker_settings, store):  # noqa: F811 - store installs the demo
    with TestClient(create_app(with_window(worker_settings, 300))) as client:
        yield client


def demo_records(settings, store, tmp_path, dataset_id="ds_demo_forget05") -> list[dict]:  # noqa: F811
    from core.db.engine import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        row = get_dataset(session, dataset_id)
    engine.dispose()
    path = tmp_path / "records.jsonl"
    fetch_dataset_file(
        store, row, path, master_key_file=settings.master_key_file, param="forget_dataset"
    )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upload(client, records, name="subject.jsonl") -> str:
    response = client.post("/v1/datasets", files={"file": (name, jsonl(records))})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def file_request(client, forget: str, *, model="demo-target", job=None, subject="Jane Roe"):
    body = {"subject": subject, "forget_dataset": forget, "model": model, "job": job or JOB}
    return client.post("/v1/deletion-requests", json=body)


def filed(client, forget: str, **kwargs) -> dict:
    response = file_request(client, forget, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()


def test_three_requests_in_the_window_are_one_job_each_with_its_own_evidence(
    app_client,
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
):
    records = demo_records(worker_settings, store, tmp_path)
    third = len(records) // 3
    parts = [records[:third], records[third : 2 * third], records[2 * third :]]
    datasets = [upload(app_client, part, f"subject{i}.jsonl") for i, part in enumerate(parts)]
    requests = [filed(app_client, ds, subject=f"subject {i}") for i, ds in enumerate(datasets)]

    batch_ids = {request["batch"]["id"] for request in requests}
    assert len(batch_ids) == 1
    assert all(request["status"] == "open" for request in requests)
    assert "waiting in batch" in requests[-1]["status_reason"]
    assert requests[-1]["batch"]["requests"] == [request["id"] for request in requests]

    flushed = app_client.post("/v1/deletion-requests/batches/flush")
    assert flushed.status_code == 200, flushed.text
    [batch] = flushed.json()["data"]
    assert batch["status"] == "dispatched" and batch["requests"] == [r["id"] for r in requests]
    job_id = batch["job_id"]
    assert batch["union_dataset"] not in datasets
    union = app_client.get(f"/v1/datasets/{batch['union_dataset']}").json()
    assert union["record_count"] == len(records)
    # nothing left to flush: one job per batch
    assert app_client.post("/v1/deletion-requests/batches/flush").json()["data"] == []

    for request in requests:
        view = app_client.get(f"/v1/deletion-requests/{request['id']}").json()
        assert view["status"] == "in_progress"
        assert [job["id"] for job in view["jobs"]] == [job_id]
        assert view["jobs"][0]["request_check"]["status"] == "pending"

    runner = JobRunner(worker_settings, session_factory, store, "w1")
    assert runner.run(job_id) == "succeeded"

    with session_factory() as session:
        job = session.get(Job, job_id)
        assert job.forget_dataset_id == batch["union_dataset"]
        # data minimisation, as for a job filed with one deletion_request: no generated text
        assert job.spec["evaluation"]["store_generations"] is False
        job_verdict = (job.verdict or {}).get("status")
    views = [app_client.get(f"/v1/deletion-requests/{r['id']}").json() for r in requests]
    for view, dataset_id, part in zip(views, datasets, parts, strict=True):
        check = view["jobs"][0]["request_check"]
        assert check["status"] in ("forgotten", "not_forgotten", "not_verifiable")
        assert check["records"]["dataset_id"] == dataset_id
        assert check["records"]["count"] == len(part)
        assert check["small_sample"] is True  # a handful of records each
        assert {c["name"] for c in check["checks"]} >= {"knowledge"}
        # the rule: the job's verdict AND the request's own records
        expected = "fulfilled" if (job_verdict, check["status"]) == ("forgotten",) * 2 else None
        if expected:
            assert view["status"] == "fulfilled"
        else:
            assert view["status"] == "needs_attention"
        cost = view["batch"]["cost"]
        assert (cost["requests_served"], cost["jobs_saved"]) == (3, 2)
        assert cost["measured_seconds"] > 0
        assert cost["estimated_separate_seconds"] >= cost["training_seconds"]

    page = app_client.get(f"/deletion-requests/{requests[0]['id']}")
    assert page.status_code == 200
    assert "Cost saved" in page.text and "This request's own records" in page.text

    # Certificates: make the job's verdict forgotten (the tiny model's own verdict is not
    # the point here) and fail one request's own records: that one is not fulfilled.
    with session_factory() as session:
        session.get(Job, job_id).verdict = FORGOTTEN
        session.execute(
            update(JobDeletionRequest)
            .where(JobDeletionRequest.job_id == job_id)
            .values(records_verdict="forgotten")
        )
        session.execute(
            update(JobDeletionRequest)
            .where(JobDeletionRequest.deletion_request_id == requests[2]["id"])
            .values(records_verdict="not_forgotten")
        )
        session.commit()
    failed = app_client.get(f"/v1/deletion-requests/{requests[2]['id']}").json()
    assert failed["status"] == "needs_attention"
    assert "this request's own records are not_forgotten" in failed["status_reason"]
    assert (
        app_client.get(f"/v1/deletion-requests/{requests[2]['id']}/certificate").status_code == 409
    )

    documents = []
    for request, dataset_id in zip(requests[:2], datasets[:2], strict=True):
        assert (
            app_client.get(f"/v1/deletion-requests/{request['id']}").json()["status"] == "fulfilled"
        )
        response = app_client.get(f"/v1/deletion-requests/{request['id']}/certificate")
        assert response.status_code == 200, response.text
        body = response.json()["certificate"]
        assert body["deletion_request"]["id"] == request["id"]
        assert body["job"]["id"] == job_id
        assert body["batch"]["requests"] == 3
        with session_factory() as session:
            sha256 = get_dataset(session, dataset_id).sha256
        assert body["request_records"]["sha256"] == sha256
        assert body["request_evidence"]["status"] == "forgotten"
        documents.append(body)
    assert documents[0]["request_records"] != documents[1]["request_records"]


def test_a_request_after_the_window_goes_to_the_next_batch(
    app_client,
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
):
    records = demo_records(worker_settings, store, tmp_path)
    first = filed(app_client, upload(app_client, records[:3]))
    with session_factory() as session:  # the first batch's window has passed
        session.execute(
            update(DeletionBatch)
            .where(DeletionBatch.id == first["batch"]["id"])
            .values(closes_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    later = filed(app_client, upload(app_client, records[3:6]))
    assert later["batch"]["id"] != first["batch"]["id"]

    # the reaper's pass serves the closed batch only
    reaper = ReaperThread(session_factory, make_celery(worker_settings), worker_settings, store)
    dispatched = reaper.batch_if_due()
    assert [batch.id for batch in dispatched] == [first["batch"]["id"]]
    assert reaper.batch_if_due() == []
    first_view = app_client.get(f"/v1/deletion-requests/{first['id']}").json()
    later_view = app_client.get(f"/v1/deletion-requests/{later['id']}").json()
    assert first_view["status"] == "in_progress" and first_view["job_count"] == 1
    assert later_view["status"] == "open" and later_view["batch"]["status"] == "open"
    # a batch of one trains on the request's own records: no union is made
    assert first_view["batch"]["union_dataset"] == first["forget_dataset"]


def test_different_models_settings_or_tenants_are_never_merged(
    app_client,
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
):
    records = demo_records(worker_settings, store, tmp_path)
    forget = upload(app_client, records[:3])
    base = filed(app_client, forget)
    spelled_out = {**JOB, "seed": 0, "lora": None}  # the same settings, defaults spelled out
    same = filed(app_client, upload(app_client, records[3:6]), job=spelled_out)
    other_model = filed(app_client, forget, model="demo-retrain")
    other_rate = {**JOB, "hyperparameters": {**JOB["hyperparameters"], "learning_rate": 2e-3}}
    other_settings = filed(app_client, forget, job=other_rate)
    assert same["batch"]["id"] == base["batch"]["id"]
    assert (
        len({base["batch"]["id"], other_model["batch"]["id"], other_settings["batch"]["id"]}) == 3
    )

    # another tenant's request with the same model and settings gets a batch of its own
    with tenant_bound("globex"), session_factory() as session:
        stored = store_dataset_file(
            store,
            _write(tmp_path / "globex.jsonl", records[:3]),
            master_key=load_or_create_master_key(worker_settings.master_key_file),
            filename="globex.jsonl",
            name="globex",
        )
        record_dataset(session, stored)
        session.commit()
        created, _ = request_service.create_deletion_request(
            session,
            with_window(worker_settings, 300),
            store,
            make_celery(worker_settings),
            {
                "subject": "x",
                "forget_dataset": stored.dataset_id,
                "model": "demo-target",
                "job": JOB,
            },
            principal="globex-key",
        )
    assert created.batch.id != base["batch"]["id"]
    assert created.batch.requests == [created.id]
    # ... and a flush by the default tenant never takes it
    flushed = app_client.post("/v1/deletion-requests/batches/flush").json()["data"]
    assert created.batch.id not in {batch["id"] for batch in flushed}
    assert len(flushed) == 3
    for batch in flushed:
        assert created.id not in batch["requests"]
    # the foreign tenant's dataset is unknown here: 404 naming the field
    response = file_request(app_client, stored.dataset_id)
    assert error_of(response) == (404, "dataset_not_found", "forget_dataset")


def _write(path, records):
    path.write_bytes(jsonl(records))
    return path


def test_two_batchers_racing_make_one_job(
    app_client,
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
):
    records = demo_records(worker_settings, store, tmp_path)
    requests = [filed(app_client, upload(app_client, records[i : i + 2])) for i in (0, 2, 4)]
    batch_id = requests[0]["batch"]["id"]
    publisher = make_celery(worker_settings)
    start = threading.Barrier(2)
    results, errors = [], []

    def batcher():
        try:
            with session_factory() as session:
                start.wait()
                batch = dispatch_batch(session, store, worker_settings, publisher, batch_id)
                results.append(batch.job_id if batch is not None else None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=batcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    job_ids = [job_id for job_id in results if job_id is not None]
    assert len(job_ids) == 1, results
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        links = session.scalars(select(JobDeletionRequest)).all()
        assert sorted(link.deletion_request_id for link in links) == sorted(
            r["id"] for r in requests
        )
        assert {link.job_id for link in links} == set(job_ids)


def test_no_window_serves_a_request_at_once(
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    tmp_path,
):
    records = demo_records(worker_settings, store, tmp_path)
    with TestClient(create_app(with_window(worker_settings, 0))) as client:
        request = filed(client, upload(client, records[:3]))
    assert request["status"] == "in_progress"
    assert request["batch"]["status"] == "dispatched"
    assert [job["id"] for job in request["jobs"]] == [request["batch"]["job_id"]]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"forget_dataset": "ds_00000000000000000000000000"},
            (404, "dataset_not_found", "forget_dataset"),
        ),
        ({"model": "no-such-model"}, (422, "unknown_model", "model")),
        (
            {"job": {**JOB, "evaluation": {"generate": False}}},
            (422, "missing_holdout", "job.evaluation.holdout"),
        ),
        (
            {"job": {**JOB, "evaluation": {"holdout": "ds_00000000000000000000000000"}}},
            (422, "unknown_dataset", "job.evaluation.holdout"),
        ),
        (
            {"job": {**JOB, "retain": "ds_00000000000000000000000000"}},
            (422, "unknown_dataset", "job.retain"),
        ),
        ({"job": {**JOB, "learning_rate": 1}}, (422, "unknown_field", "job.learning_rate")),
        ({"job": {**JOB, "model": "demo-target"}}, (422, "unknown_field", "job.model")),
        ({"job": {**JOB, "method": "no-such-method"}}, (422, "unknown_method", "job.method")),
        ({"job": None}, (422, "missing_field", "job")),
        ({"model": None}, (422, "missing_field", "model")),
    ],
)
def test_bad_input_names_the_field(app_client, worker_settings, store, tmp_path, change, expected):  # noqa: F811
    forget = upload(app_client, demo_records(worker_settings, store, tmp_path)[:2])
    body = {"subject": "x", "forget_dataset": forget, "model": "demo-target", "job": JOB, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = app_client.post("/v1/deletion-requests", json=body)
    assert error_of(response) == expected, response.text
    # nothing was filed
    assert app_client.get("/v1/deletion-requests").json()["data"] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_cli_files_flushes_and_shows_the_cost(
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
):
    import httpx
    from typer.testing import CliRunner

    from cli.main import app as cli
    from tests.fixtures.live import LiveServer
    from tests.fixtures.services import free_port

    records = demo_records(worker_settings, store, tmp_path)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(JOB))
    server = LiveServer(create_app(with_window(worker_settings, 300)), free_port()).start()
    try:
        runner = CliRunner()

        def obliviate(*args):
            result = runner.invoke(cli, [args[0], "--url", server.url, *args[1:]])
            assert result.exit_code == 0, result.output
            return " ".join(result.output.split())  # as one line, whatever the wrapping

        with httpx.Client(base_url=server.url) as client:
            datasets = [upload(client, records[i : i + 3], f"s{i}.jsonl") for i in (0, 3)]
        for dataset_id in datasets:
            created = obliviate(
                "deletion-requests", "create", "Jane Roe", "--forget-dataset", dataset_id,
                "--model", "demo-target", "--job", str(job_file),
            )  # fmt: skip
            assert "waiting in batch" in created
        flushed = obliviate("deletion-requests", "batch")
        assert "2 request(s) for demo-target, job job_" in flushed
        job_id = flushed.split("demo-target, job ")[1].split()[0]
        assert JobRunner(worker_settings, session_factory, store, "w1").run(job_id) == "succeeded"
        request_id = created.split("dr_", 1)[1].split()[0]
        request_id = f"dr_{request_id}"
        shown = obliviate("deletion-requests", "get", request_id)
        assert "this request's 3 records:" in shown
        assert "cost: 2 requests served by one job (1 saved); measured" in shown
        listed = obliviate("deletion-requests", "list")
        assert "(2)" in listed
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("job_verdict", "records_verdict", "status"),
    [
        (FORGOTTEN, "forgotten", "fulfilled"),
        # a small sample passing its own check never beats the union's verdict
        (NOT_FORGOTTEN, "forgotten", "needs_attention"),
        (FORGOTTEN, "not_forgotten", "needs_attention"),
        (FORGOTTEN, "pending", "needs_attention"),  # its records were never checked
    ],
)
def test_a_batched_request_needs_the_jobs_verdict_and_its_own_records(
    app_client,
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
    job_verdict,
    records_verdict,
    status,
):
    records = demo_records(worker_settings, store, tmp_path)
    request = filed(app_client, upload(app_client, records[:2]))
    [batch] = app_client.post("/v1/deletion-requests/batches/flush").json()["data"]
    with session_factory() as session:
        finish_succeeded(session, batch["job_id"], job_verdict)
        session.execute(
            update(JobDeletionRequest)
            .where(JobDeletionRequest.job_id == batch["job_id"])
            .values(records_verdict=records_verdict)
        )
        session.commit()
    view = app_client.get(f"/v1/deletion-requests/{request['id']}").json()
    assert view["status"] == status, view["status_reason"]
    listed = app_client.get("/v1/deletion-requests", params={"status": status}).json()
    assert [item["id"] for item in listed["data"]] == [request["id"]]


def test_retention_shreds_the_union_only_once_every_request_of_the_batch_is_due(
    app_client,
    worker_settings,  # noqa: F811
    store,  # noqa: F811
    session_factory,
    tmp_path,
):
    from core.db.deletion_requests import forget_sets_due

    records = demo_records(worker_settings, store, tmp_path)
    first, second = (filed(app_client, upload(app_client, records[i : i + 2])) for i in (0, 2))
    [batch] = app_client.post("/v1/deletion-requests/batches/flush").json()["data"]
    union = batch["union_dataset"]

    def records_verdict(request_id: str, value: str) -> None:
        with session_factory() as session:
            session.execute(
                update(JobDeletionRequest)
                .where(JobDeletionRequest.deletion_request_id == request_id)
                .values(records_verdict=value)
            )
            session.commit()

    with session_factory() as session:
        finish_succeeded(session, batch["job_id"], FORGOTTEN)
    records_verdict(first["id"], "forgotten")
    records_verdict(second["id"], "not_forgotten")  # still waiting to be served
    later = utcnow() + timedelta(days=1)
    with session_factory() as session:
        assert forget_sets_due(session, later) == [first["forget_dataset"]]
    records_verdict(second["id"], "forgotten")
    with session_factory() as session:
        assert forget_sets_due(session, later) == sorted(
            [first["forget_dataset"], second["forget_dataset"], union]
        )
