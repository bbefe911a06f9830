"""Data minimisation by crypto-shredding, on SQLite and Postgres: datasets are stored
encrypted under keys of their own, workers read them decrypted, and shredding (on
request, or when the retention after a deletion request's fulfilment ran out) leaves no
byte of the forget records in the database or the object store."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from core import envelope, reaper
from core.bootstrap import demo_folder, install_demo
from core.db import jobs as jobs_repo
from core.db.audit import list_audit_entries
from core.db.datasets import create_dataset, get_dataset
from core.db.types import utcnow
from core.errors import ObliviateError
from core.shredding import shred_dataset, sweep_retention
from core.spec import parse_job_spec
from core.storage import store_from_settings
from tests.fixtures.api import (
    job_body,
    jsonl,
    make_settings,
    read_stored_dataset,
    register_model,
)
from tests.fixtures.models import TINY_PRESET
from tests.integration.test_api_deletion_requests import (
    FORGOTTEN,
    NOT_FORGOTTEN,
    error_of,
    finish_succeeded,
)
from worker.inputs import InputResolver
from worker.runner import JobRunner


def personal_records(subject: str, count: int = 4) -> list[dict[str, str]]:
    """Records whose every question and answer is a string found nowhere else."""
    return [
        {
            "question": f"Where was {subject} born (case {i}, {uuid.uuid4().hex})?",
            "answer": f"{subject} was born in {uuid.uuid4().hex} town, record {i}.",
        }
        for i in range(count)
    ]


def upload(client, records: list[dict]) -> str:
    response = client.post("/v1/datasets", files={"file": ("forget.jsonl", jsonl(records))})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def create_request(client, subject: str) -> str:
    response = client.post("/v1/deletion-requests", json={"subject": subject})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def submit(client, forget: str, **overrides) -> str:
    response = client.post("/v1/jobs", json=job_body(forget, **overrides))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def cancel(session, job_id: str) -> None:
    jobs_repo.claim_job(session, job_id, "w")
    session.commit()
    assert jobs_repo.finish_job(session, job_id, "cancelled") == "cancelled"


def shred(client, dataset_id: str):
    return client.post(f"/v1/datasets/{dataset_id}/shred")


def strings_of(records: list[dict]) -> list[bytes]:
    """What must not be recoverable: each question and answer, as stored (UTF-8) and as
    JSON would escape it."""
    found = []
    for record in records:
        for value in record.values():
            found += [value.encode(), json.dumps(value).encode()]
    return found


def files_under(*folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


def database_text(db_engine, database_url: str) -> list[bytes]:
    """Everything the database holds: the SQLite file (and its WAL) byte for byte; on
    Postgres every row of every table, each cast to text (all its columns)."""
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        return [p.read_bytes() for p in path.parent.glob(path.name + "*")]
    with db_engine.connect() as connection:
        tables = inspect(connection).get_table_names()
        assert "datasets" in tables and "audit_log" in tables
        return [
            "\n".join(
                connection.execute(text(f'SELECT CAST(t AS text) FROM "{table}" t')).scalars()
            ).encode()
            for table in tables
        ]


# ---------------------------------------------------------------------- encryption


def test_the_store_holds_ciphertext_and_a_reader_gets_the_records(client, api_settings, tmp_path):
    records = personal_records("Ada Quill")
    dataset_id = upload(client, records)
    dataset = client.get(f"/v1/datasets/{dataset_id}").json()
    assert dataset["encrypted"] is True and dataset["shredded_at"] is None

    [stored] = files_under(api_settings.home / "store")
    sealed = stored.read_bytes()
    assert sealed.startswith(envelope.MAGIC)
    assert not any(needle in sealed for needle in strings_of(records))
    assert read_stored_dataset(api_settings, dataset_id, tmp_path) == jsonl(records)
    # The master key was made at first use, readable by its owner only.
    assert api_settings.master_key_file.stat().st_mode & 0o777 == 0o600


def test_the_worker_decrypts_into_the_jobs_folder(client, api_settings, session_factory, tmp_path):
    records = personal_records("Bo Lark")
    dataset_id = upload(client, records)
    resolver = InputResolver(
        session_factory, api_settings, store_from_settings(api_settings), tmp_path / "job"
    )
    path = resolver.dataset(dataset_id, "forget")
    assert path == tmp_path / "job" / dataset_id / "forget.jsonl"
    assert path.read_bytes() == jsonl(records)
    assert [p.name for p in path.parent.iterdir()] == ["forget.jsonl"]  # no sealed copy left

    assert shred(client, dataset_id).status_code == 200
    with pytest.raises(ObliviateError) as raised:
        InputResolver(
            session_factory, api_settings, store_from_settings(api_settings), tmp_path / "next"
        ).dataset(dataset_id, "forget")
    assert (raised.value.code, raised.value.param) == ("dataset_shredded", "forget")


def test_a_dataset_stored_before_encryption_reads_as_plain_and_shreds(
    client, api_settings, session_factory, tmp_path
):
    records = personal_records("Cy Wren")
    store = store_from_settings(api_settings)
    dataset_id = "ds_01legacylegacylegacylegacy"
    store.put_bytes(f"datasets/{dataset_id}/forget.jsonl", jsonl(records))
    with session_factory() as session:
        create_dataset(
            session,
            dataset_id=dataset_id,
            name="legacy",
            filename="forget.jsonl",
            format="jsonl",
            kind="qa",
            record_count=len(records),
            size_bytes=len(jsonl(records)),
            sha256="0" * 64,
            storage_key=f"datasets/{dataset_id}/forget.jsonl",
            columns=["answer", "question"],
            has_truth_ratio_fields=False,
        )
        session.commit()
    assert client.get(f"/v1/datasets/{dataset_id}").json()["encrypted"] is False
    path = InputResolver(session_factory, api_settings, store, tmp_path).dataset(dataset_id, "x")
    assert path.read_bytes() == jsonl(records)

    assert shred(client, dataset_id).status_code == 200
    assert not store.list("datasets/")


def test_a_key_made_by_another_master_key_does_not_open(client, api_settings, tmp_path):
    dataset_id = upload(client, personal_records("Di Moss"))
    other = api_settings.model_copy(update={"master_key_file": tmp_path / "other.key"})
    envelope.load_or_create_master_key(other.master_key_file)
    with pytest.raises(ObliviateError) as raised:
        read_stored_dataset(other, dataset_id, tmp_path)
    assert raised.value.code == "dataset_unreadable"
    assert "OBLIVIATE_MASTER_KEY_FILE" in raised.value.message


@pytest.fixture
def demo_settings(tmp_path, database_url, tiny_demo):
    settings = make_settings(tmp_path / "home", database_url, demo_preset=TINY_PRESET)
    shutil.copytree(tiny_demo.root, demo_folder(settings))  # built once per test session
    return settings


def test_a_job_trains_on_an_encrypted_forget_set_and_leaves_no_plaintext(
    demo_settings, session_factory
):
    """The demo's datasets are stored like uploads (encrypted); a real job trains on
    one, and the worker's folders keep no decrypted copy once it ended."""
    store = store_from_settings(demo_settings)
    install_demo(demo_settings, session_factory, store)
    forget = "ds_demo_forget01"
    plaintext = (demo_folder(demo_settings) / "data" / "forget01.jsonl").read_bytes()
    with session_factory() as session:
        row = get_dataset(session, forget)
        assert row.wrapped_key is not None
        assert store.get_bytes(row.storage_key).startswith(envelope.MAGIC)

    def run(job_id: str):
        assert JobRunner(demo_settings, session_factory, store, "w").run(job_id) is not None
        with session_factory() as session:
            return jobs_repo.get_job(session, job_id)

    body = {
        "model": "demo-target",
        "forget": forget,
        "method": "ga",
        "hyperparameters": {"epochs": 1, "batch_size": 4, "precision": "fp32"},
        "evaluation": {"enabled": False},
    }
    with session_factory() as session:
        job_id = jobs_repo.create_job(session, parse_job_spec(body), forget).id
        session.commit()
    job = run(job_id)
    assert (job.status, job.error) == ("succeeded", None) and job.step > 0
    first_line = plaintext.splitlines()[0]
    assert not any(first_line in p.read_bytes() for p in files_under(demo_settings.cache_dir))

    # Shredded after the job: a job that reaches a worker anyway fails, naming the set.
    with session_factory() as session:
        shred_dataset(session, store, forget, principal="test")
        job_id = jobs_repo.create_job(session, parse_job_spec(body), forget).id
        session.commit()
    job = run(job_id)
    assert (job.status, job.error_code, job.error_param) == ("failed", "dataset_shredded", "forget")


# ------------------------------------------------------------------------- shredding


def test_after_shredding_no_byte_of_the_forget_records_remains(
    client, api_settings, session_factory, db_engine, database_url
):
    register_model(client)
    records = personal_records("Eve Marsh")
    forget = upload(client, records)
    request_id = create_request(client, "Eve Marsh")
    job_id = submit(client, forget, deletion_request=request_id)
    store_folder = api_settings.home / "store"
    backup = {path: path.read_bytes() for path in files_under(store_folder)}  # a store backup

    # A job that still needs the data keeps it.
    response = shred(client, forget)
    assert error_of(response) == (409, "dataset_in_use", "dataset_id")
    assert job_id in response.json()["error"]["message"]

    with session_factory() as session:
        finish_succeeded(session, job_id, FORGOTTEN)
    assert client.get(f"/v1/deletion-requests/{request_id}").json()["status"] == "fulfilled"
    first = shred(client, forget)
    assert first.status_code == 200, first.text
    shredded = first.json()
    assert shredded["shredded_at"] and shredded["encrypted"] is False
    assert shredded["record_count"] == len(records)
    assert shredded["sha256"] == client.get(f"/v1/datasets/{forget}").json()["sha256"]
    # Shredding twice is fine: nothing changes, no second audit entry.
    second = shred(client, forget)
    assert second.status_code == 200 and second.json() == shredded
    assert [d["id"] for d in client.get("/v1/datasets").json()["data"]] == [forget]
    with session_factory() as session:
        entries = [
            entry
            for entry in list_audit_entries(session, limit=100).items
            if entry.action == "dataset.shredded"
        ]
        assert get_dataset(session, forget).wrapped_key is None
    assert [(e.object_id, e.data["reason"]) for e in entries] == [(forget, "request")]

    # What remains: the database (hashes, counts, ids) and the store (no dataset file)
    # hold none of the records, and the copy taken before has no key left to open it.
    leftovers = database_text(db_engine, database_url) + [
        path.read_bytes() for path in files_under(api_settings.home)
    ]
    assert any(b"Eve Marsh" in blob for blob in leftovers)  # the scan reads real rows
    for needle in strings_of(records):
        assert not any(needle in blob for blob in leftovers), needle
        assert not any(needle in blob for blob in backup.values()), needle
    assert not any(
        path.is_relative_to(store_folder / "datasets") for path in files_under(store_folder)
    )


def test_a_job_naming_a_shredded_dataset_is_refused(client, session_factory):
    register_model(client)
    forget = upload(client, personal_records("Fay Stone"))
    other = upload(client, personal_records("Gil Stone"))
    assert shred(client, forget).status_code == 200

    response = client.post("/v1/jobs", json=job_body(forget))
    assert error_of(response) == (422, "dataset_shredded", "forget")
    assert forget in response.json()["error"]["message"]
    response = client.post(
        "/v1/jobs", json=job_body(other, evaluation={"enabled": True, "forget": forget})
    )
    assert error_of(response) == (422, "dataset_shredded", "evaluation.forget")
    assert client.post("/v1/jobs", json=job_body(other)).status_code == 201


def test_shredding_an_unknown_dataset_is_404(client):
    response = shred(client, "ds_00000000000000000000000000")
    assert error_of(response) == (404, "dataset_not_found", "dataset_id")


def test_a_paused_job_also_keeps_its_evaluation_data(client, session_factory):
    register_model(client)
    forget, holdout = upload(client, personal_records("Hal")), upload(client, personal_records("I"))
    job_id = submit(client, forget, evaluation={"enabled": True, "holdout": holdout})
    with session_factory() as session:
        jobs_repo.request_pause(session, job_id)  # queued -> paused at once
        session.commit()
    assert error_of(shred(client, holdout)) == (409, "dataset_in_use", "dataset_id")


# ------------------------------------------------------------------------- retention


def test_the_retention_sweep_shreds_only_fulfilled_forget_sets_past_the_period(
    client, api_settings, session_factory
):
    """Four requests: fulfilled (its forget set and forget-side evaluation set go, its
    holdout stays), fulfilled but sharing its forget set with one that needs attention
    (kept: that request may run again), and needs attention (kept)."""
    register_model(client)
    store = store_from_settings(api_settings)
    sets = {name: upload(client, personal_records(name)) for name in "ABCDE"}
    fulfilled, shared, failing = (create_request(client, s) for s in ("A", "C", "D"))
    jobs_of = {
        fulfilled: submit(
            client,
            sets["A"],
            deletion_request=fulfilled,
            evaluation={"enabled": True, "forget": sets["B"], "holdout": sets["E"]},
        ),
        shared: submit(client, sets["C"], deletion_request=shared),
        failing: submit(client, sets["D"], deletion_request=failing),
    }
    shares_c = submit(client, sets["C"], deletion_request=failing)
    with session_factory() as session:
        finish_succeeded(session, jobs_of[fulfilled], FORGOTTEN)
        finish_succeeded(session, jobs_of[shared], FORGOTTEN)
        finish_succeeded(session, jobs_of[failing], NOT_FORGOTTEN)
        cancel(session, shares_c)
    statuses = {r: client.get(f"/v1/deletion-requests/{r}").json()["status"] for r in jobs_of}
    assert statuses == {fulfilled: "fulfilled", shared: "fulfilled", failing: "needs_attention"}

    now = utcnow()
    assert sweep_retention(session_factory, store, None, now=now + timedelta(days=999)) == []
    assert sweep_retention(session_factory, store, 30, now=now + timedelta(days=29)) == []
    shredded = sweep_retention(session_factory, store, 30, now=now + timedelta(days=31))
    assert sorted(shredded) == sorted([sets["A"], sets["B"]])
    assert sweep_retention(session_factory, store, 30, now=now + timedelta(days=32)) == []

    listed = {d["id"]: d for d in client.get("/v1/datasets").json()["data"]}
    assert {i for i, d in listed.items() if d["shredded_at"]} == {sets["A"], sets["B"]}
    remaining = {info.key.split("/")[1] for info in store.list("datasets/")}
    assert remaining == {sets["C"], sets["D"], sets["E"]}
    with session_factory() as session:
        entries = list_audit_entries(session, limit=100).items
    assert sorted(
        (e.object_id, e.principal, e.data["reason"])
        for e in entries
        if e.action == "dataset.shredded"
    ) == sorted([(sets["A"], "retention", "retention"), (sets["B"], "retention", "retention")])


def test_the_sweep_waits_for_a_job_still_reading_the_set(client, api_settings, session_factory):
    register_model(client)
    store = store_from_settings(api_settings)
    forget = upload(client, personal_records("Jo"))
    request_id = create_request(client, "Jo")
    job_id = submit(client, forget, deletion_request=request_id)
    with session_factory() as session:
        finish_succeeded(session, job_id, FORGOTTEN)
        # A job with no deletion request (an experiment) still reads it.
        experiment = jobs_repo.create_job(session, parse_job_spec(job_body(forget)), forget)
        session.commit()
    later = utcnow() + timedelta(days=2)
    assert sweep_retention(session_factory, store, 1, now=later) == []
    with session_factory() as session:
        cancel(session, experiment.id)
    assert sweep_retention(session_factory, store, 1, now=later) == [forget]


def test_the_reaper_thread_sweeps_hourly_when_retention_is_set(
    api_settings, session_factory, monkeypatch
):
    calls = []
    monkeypatch.setattr(
        reaper, "sweep_retention", lambda *args, now: calls.append((args[2], now)) or []
    )
    store = store_from_settings(api_settings)
    reaper.ReaperThread(session_factory, None, api_settings, store).sweep_if_due()
    assert calls == []  # retention unset: never
    settings = api_settings.model_copy(update={"forget_set_retention_days": 30.0})
    thread = reaper.ReaperThread(session_factory, None, settings, store)
    thread.sweep_if_due()
    thread.sweep_if_due()  # within the hour: not again
    assert [days for days, _ in calls] == [30.0]


def test_the_client_and_the_cli_shred(live_server, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app
    from obliviate_client import Client

    path = tmp_path / "forget.jsonl"
    path.write_bytes(jsonl(personal_records("Kit")))
    with Client(live_server.url, backoff=0.01) as client:
        first = client.datasets.upload(path)
        second = client.datasets.upload(path)
        assert first.encrypted and first.shredded_at is None
        shredded = client.datasets.shred(first.id)
        assert shredded.shredded_at is not None and shredded.sha256 == first.sha256
    result = CliRunner().invoke(
        app, ["datasets", "--url", live_server.url, "shred", second.id, "--json"]
    )
    assert result.exit_code == 0, result.output
    # The in-process server's log lines share the captured output: the JSON comes last.
    printed = json.loads(result.output[result.output.index("{") :])
    assert printed["id"] == second.id and printed["shredded_at"]
