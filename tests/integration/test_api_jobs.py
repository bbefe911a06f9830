"""POST/GET /v1/jobs over HTTP (TestClient) on SQLite and Postgres, with a real
filesystem broker under a temporary OBLIVIATE_HOME."""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from core.db import artifacts
from core.db import jobs as jobs_repo
from core.db.datasets import create_dataset
from core.db.tables import Job
from tests.fixtures.api import job_body, register_model, upload_dataset


@pytest.fixture
def forget_id(client) -> str:
    register_model(client)
    return upload_dataset(client)


def submit(client, body, **headers):
    return client.post("/v1/jobs", json=body, headers=headers)


def error_of(response) -> tuple[int, str, str | None]:
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    return response.status_code, error["code"], error["param"]


def broker_messages(settings) -> list[dict]:
    folder = settings.broker_folder / "queue"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.msg"))]


def test_submit_stores_the_job_and_publishes_its_id(client, api_settings, forget_id):
    response = submit(client, job_body(forget_id, seed=7))
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["object"] == "job" and job["status"] == "queued"
    assert job["forget"] == forget_id and job["retain"] is None and job["seed"] == 7
    assert job["hyperparameters"]["beta"] == 0.5 and job["hyperparameters"]["epochs"] == 10
    assert job["evaluation"]["enabled"] is True and job["lora"] is None
    assert job["progress"] == {
        "step": 0,
        "total_steps": None,
        "epoch": 0.0,
        "trained_tokens": 0,
        "fraction": None,
    }
    assert job["error"] is None and job["output_model"] is None
    assert job["report_available"] is False and job["attempts"] == 0

    [message] = broker_messages(api_settings)
    assert message["headers"]["task"] == "obliviate.run_job"
    assert job["id"] in message["headers"]["argsrepr"]

    fetched = client.get(f"/v1/jobs/{job['id']}").json()
    assert fetched == job


def test_all_dataset_references_must_exist(client, forget_id):
    other = upload_dataset(client, filename="retain.jsonl")
    missing = "ds_00000000000000000000000000"
    cases = {
        "forget": job_body(missing),
        "retain": job_body(forget_id, retain=missing),
        "evaluation.holdout": job_body(forget_id, evaluation={"holdout": missing}),
        "evaluation.utility.1": job_body(forget_id, evaluation={"utility": [other, "world.csv"]}),
        "evaluation.knowmem_forget": job_body(forget_id, evaluation={"knowmem_forget": missing}),
    }
    for param, body in cases.items():
        assert error_of(submit(client, body)) == (422, "unknown_dataset", param)
    ok = job_body(forget_id, retain=other, evaluation={"holdout": other, "utility": [other]})
    ok["hyperparameters"] = {"beta": 0.5}  # with a retain set the retain loss is allowed
    assert submit(client, ok).status_code == 201


def test_stable_demo_ids_work_as_references(client, session_factory, forget_id):
    with session_factory() as session:
        create_dataset(
            session,
            dataset_id="ds_demo_forget10",
            name="demo-forget10",
            filename="forget10.jsonl",
            format="jsonl",
            kind="qa",
            record_count=1,
            size_bytes=1,
            sha256="0" * 64,
            storage_key="datasets/ds_demo_forget10/forget10.jsonl",
            columns=["answer", "question"],
            has_truth_ratio_fields=False,
        )
        session.commit()
    response = submit(client, job_body("ds_demo_forget10"))
    assert response.status_code == 201, response.text
    assert client.get("/v1/datasets/ds_demo_forget10").json()["name"] == "demo-forget10"
    first = client.get("/v1/datasets", params={"limit": 1}).json()
    rest = client.get("/v1/datasets", params={"after": first["last_id"]}).json()
    assert [d["id"] for d in first["data"] + rest["data"]] == ["ds_demo_forget10", forget_id]


def test_model_references_are_vetted(client, api_settings, forget_id):
    cases = [
        (job_body(forget_id, model="no-such-model"), (422, "unknown_model", "model")),
        (
            job_body(forget_id, model="file:///etc"),
            (422, "model_location_not_allowed", "model"),
        ),
        (
            job_body(forget_id, model="http://127.0.0.1/model.tar.gz"),
            (422, "model_location_not_allowed", "model"),
        ),
        (job_body(forget_id, model="ftp://host/x"), (422, "invalid_model", "model")),
        (
            job_body(forget_id, evaluation={"oracle": "retrained"}),
            (422, "unknown_model", "evaluation.oracle"),
        ),
        (
            job_body(forget_id, evaluation={"oracle": "job:job_00000000000000000000000000"}),
            (422, "unknown_oracle_job", "evaluation.oracle"),
        ),
        # several oracles: the error names the one at fault by its place in the list
        (
            job_body(forget_id, evaluation={"oracle": ["org/retrain-1", "retrained"]}),
            (422, "unknown_model", "evaluation.oracle.1"),
        ),
        (
            job_body(
                forget_id,
                evaluation={"oracle": ["job:job_00000000000000000000000000", "org/retrain-1"]},
            ),
            (422, "unknown_oracle_job", "evaluation.oracle.0"),
        ),
        (
            job_body(forget_id, evaluation={"oracle": ["org/retrain-1", "org/retrain-1"]}),
            (422, "invalid_value", "evaluation.oracle"),
        ),
        (
            job_body(forget_id, evaluation={"oracle": []}),
            (422, "invalid_value", "evaluation.oracle"),
        ),
    ]
    for body, expected in cases:
        assert error_of(submit(client, body)) == expected, body
    folder = api_settings.models_dir / "tiny"
    folder.mkdir(parents=True)
    assert submit(client, job_body(forget_id, model=str(folder))).status_code == 201
    assert submit(client, job_body(forget_id, model="org/hub-model")).status_code == 201
    pooled = job_body(forget_id, evaluation={"oracle": ["org/retrain-1", "org/retrain-2"]})
    created = submit(client, pooled)
    assert created.status_code == 201, created.text
    job = client.get(f"/v1/jobs/{created.json()['id']}").json()
    assert job["evaluation"]["oracle"] == ["org/retrain-1", "org/retrain-2"]


def test_oracle_job_needs_a_succeeded_job_with_a_report(client, session_factory, forget_id):
    earlier = submit(client, job_body(forget_id)).json()["id"]
    body = job_body(forget_id, evaluation={"oracle": f"job:{earlier}"})
    assert error_of(submit(client, body)) == (422, "oracle_not_ready", "evaluation.oracle")
    with session_factory() as session:
        jobs_repo.claim_job(session, earlier, "w")
        artifacts.save_report(session, earlier, 1, {}, f"jobs/{earlier}/report/report.json", None)
        session.commit()
        jobs_repo.finish_job(session, earlier, "succeeded")
    # A report without an oracle stored no oracle statistics to reuse.
    assert error_of(submit(client, body)) == (422, "oracle_not_found", "evaluation.oracle")
    with_oracle = submit(client, job_body(forget_id)).json()["id"]
    with session_factory() as session:
        jobs_repo.claim_job(session, with_oracle, "w")
        key = f"jobs/{with_oracle}/report/report.json"
        artifacts.save_report(session, with_oracle, 1, {"forget_quality": 0.4}, key, None)
        session.commit()
        jobs_repo.finish_job(session, with_oracle, "succeeded")
    body = job_body(forget_id, evaluation={"oracle": f"job:{with_oracle}"})
    assert submit(client, body).status_code == 201


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"method": "unlearn-all"}, (422, "unknown_method", "method")),
        ({"hyperparameters": {"beta": -1}}, (422, "invalid_value", "hyperparameters.beta")),
        ({"hyperparameters": {"betta": 1}}, (422, "unknown_field", "hyperparameters.betta")),
        ({"hyperparameters": {"epochs": 0}}, (422, "invalid_value", "hyperparameters.epochs")),
        # a pull back to match_holdout's ceilings without match_holdout would do nothing
        (
            {"hyperparameters": {"beta": 0.5, "match_pull": 0.1}},
            (422, "invalid_value", "hyperparameters.match_pull"),
        ),
        ({"hyperparameters": {}}, (422, "missing_retain_set", "retain")),
        ({"forget": None}, (422, "missing_field", "forget")),
        ({"seed": -1}, (422, "invalid_value", "seed")),
        ({"surprise": 1}, (422, "unknown_field", "surprise")),
        ({"lora": {"r": 0}}, (422, "invalid_value", "lora.r")),
        ({"metadata": {"k": 1}}, (422, "invalid_value", "metadata.k")),
        ({"prompt_template": "no placeholder"}, (422, "invalid_value", "prompt_template")),
    ],
)
def test_invalid_specs_name_the_field(client, forget_id, change, expected):
    assert error_of(submit(client, {**job_body(forget_id), **change})) == expected


def test_missing_fields_and_malformed_bodies(client, forget_id):
    body = job_body(forget_id)
    del body["forget"]
    assert error_of(submit(client, body)) == (422, "missing_field", "forget")

    def raw(content: bytes):
        return client.post(
            "/v1/jobs", content=content, headers={"content-type": "application/json"}
        )

    assert error_of(raw(b'{"model": ')) == (400, "invalid_json", None)
    assert error_of(raw(b"")) == (400, "invalid_json", None)
    assert error_of(raw(b"\xff\xfe{")) == (400, "invalid_json", None)
    assert error_of(raw(b"[" * 100_000 + b"]" * 100_000)) == (400, "invalid_json", None)
    assert error_of(raw(b"[1, 2]")) == (422, "invalid_body", None)
    valid = json.dumps(job_body(forget_id))
    for token, param in [
        ('"beta": NaN', "hyperparameters.beta"),
        ('"beta": Infinity', "hyperparameters.beta"),
        ('"beta": -Infinity', "hyperparameters.beta"),
        ('"beta": 1e999', "hyperparameters.beta"),
    ]:
        content = valid.replace('"beta": 0.5', token).encode()
        assert error_of(raw(content)) == (422, "non_finite_value", param)
    nan_eval = json.dumps({**job_body(forget_id), "evaluation": {"min_k_fraction": "X"}})
    nan_eval = nan_eval.replace('"X"', "NaN").encode()
    assert error_of(raw(nan_eval)) == (422, "non_finite_value", "evaluation.min_k_fraction")
    nul = json.dumps(job_body(forget_id, metadata={"k": "a\u0000b"})).encode()
    assert error_of(raw(nul)) == (422, "invalid_value", "metadata.k")
    surrogate = json.dumps(job_body(forget_id, model="x")).replace('"x"', '"\\ud800"').encode()
    assert error_of(raw(surrogate)) == (422, "invalid_value", "model")
    assert error_of(raw(b"{" + b" " * (2 << 20) + b"}")) == (413, "request_too_large", None)


def test_list_pages_newest_first_with_filters(client, session_factory, forget_id):
    ids = [
        submit(client, job_body(forget_id, metadata={"team": "a" if i % 2 else "b"})).json()["id"]
        for i in range(5)
    ]
    ids.append(submit(client, job_body(forget_id, method="ga", hyperparameters={})).json()["id"])
    newest_first = list(reversed(ids))

    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/jobs", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert seen == newest_first

    with session_factory() as session:
        jobs_repo.claim_job(session, ids[0], "w")
        jobs_repo.request_cancel(session, ids[1])
        session.commit()

    def listed(**params) -> list[str]:
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    assert listed(status=["running", "cancelled"]) == [ids[1], ids[0]]
    assert listed(method="ga") == [ids[5]]
    assert listed(**{"metadata.team": "a"}) == [ids[3], ids[1]]
    assert listed(**{"metadata.team": "a", "status": "queued"}) == [ids[3]]
    assert listed(**{"metadata.nope": "a"}) == []
    updated_at = client.get(f"/v1/jobs/{ids[5]}").json()["updated_at"]
    assert listed(updated_after=updated_at) == [ids[1], ids[0]]
    assert listed(updated_after="2000-01-01T00:00:00Z") == newest_first
    # RFC 3339 times whose UTC is past year 9999 are clamped: nothing was updated after.
    assert listed(updated_after="9999-12-31T23:59:59-05:00") == []

    for params, param in [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"status": "bogus"}, "status.0"),
        ({"after": "not-an-id"}, "after"),
        ({"updated_after": "yesterday"}, "updated_after"),
        ({"updated_after": "2000-01-01T00:00:00"}, "updated_after"),  # no offset
        ({"updated_after": "0.5"}, "updated_after"),  # not a Unix time either
        ({"metadata.": "x"}, "metadata."),
    ]:
        status, code, got = error_of(client.get("/v1/jobs", params=params))
        assert (status, got) == (422, param), params


def test_etag_and_if_none_match(client, session_factory, forget_id):
    job_id = submit(client, job_body(forget_id)).json()["id"]
    first = client.get(f"/v1/jobs/{job_id}")
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    unchanged = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == etag
    assert unchanged.content == b""
    assert client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": '"x"'}).status_code == 200

    with session_factory() as session:
        jobs_repo.claim_job(session, job_id, "w")
        jobs_repo.heartbeat(session, job_id, step=1, total_steps=4)
    changed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["progress"]["fraction"] == 0.25
    assert changed.json()["status"] == "running" and changed.json()["started_at"]


def test_cancel(client, session_factory, forget_id):
    queued = submit(client, job_body(forget_id)).json()["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert error_of(client.post(f"/v1/jobs/{queued}/cancel")) == (
        409,
        "job_not_cancellable",
        "job_id",
    )

    running = submit(client, job_body(forget_id)).json()["id"]
    with session_factory() as session:
        jobs_repo.claim_job(session, running, "w")
    response = client.post(f"/v1/jobs/{running}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelling"
    missing = "job_00000000000000000000000000"
    assert error_of(client.post(f"/v1/jobs/{missing}/cancel")) == (404, "job_not_found", "job_id")

    events = client.get(f"/v1/jobs/{queued}/events").json()
    assert [e["data"]["status"] for e in events["data"]] == ["queued", "cancelled"]


def test_events_and_metrics_pages(client, session_factory, forget_id):
    job_id = submit(client, job_body(forget_id)).json()["id"]
    with session_factory() as session:
        jobs_repo.claim_job(session, job_id, "w")
        jobs_repo.add_events(
            session, job_id, [{"type": "phase", "message": f"p{i}"} for i in range(3)]
        )
        jobs_repo.add_metrics(
            session,
            job_id,
            [{"step": s, "epoch": s / 4, "values": {"loss": 2.0 - s / 10}} for s in range(1, 6)],
        )
        session.commit()

    page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}).json()
    assert page["has_more"] and [e["type"] for e in page["data"]] == ["status", "status"]
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"after": page["last_id"]}).json()
    assert [e["message"] for e in rest["data"]] == ["p0", "p1", "p2"] and not rest["has_more"]

    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"after_step": 2, "limit": 2}).json()
    assert [(m["step"], m["epoch"]) for m in metrics["data"]] == [(3, 0.75), (4, 1.0)]
    assert metrics["data"][0]["values"] == {"loss": 1.7} and metrics["has_more"]
    assert metrics["last_step"] == 4

    missing = "job_00000000000000000000000000"
    for path in ("events", "metrics", "checkpoints", "report"):
        assert error_of(client.get(f"/v1/jobs/{missing}/{path}"))[:2] == (404, "job_not_found")
    assert error_of(client.get(f"/v1/jobs/{job_id}/events", params={"after": -1}))[0] == 422


def test_idempotency_key_replays_or_conflicts(client, session_factory, forget_id):
    body = job_body(forget_id)
    first = submit(client, body, **{"Idempotency-Key": "req-1"})
    assert first.status_code == 201
    # Same body, keys in another order: the same request.
    reordered = dict(reversed(list(body.items())))
    again = submit(client, reordered, **{"Idempotency-Key": "req-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    different = submit(client, job_body(forget_id, seed=1), **{"Idempotency-Key": "req-1"})
    assert error_of(different) == (409, "idempotency_key_reused", "Idempotency-Key")
    assert submit(client, body, **{"Idempotency-Key": "req-2"}).json()["id"] != first.json()["id"]
    assert error_of(submit(client, body, **{"Idempotency-Key": "x" * 300}))[:2] == (
        422,
        "invalid_value",
    )
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2


def test_concurrent_duplicates_create_one_job(client, session_factory, forget_id):
    body = job_body(forget_id)
    contenders = 6
    barrier = threading.Barrier(contenders)
    responses = []

    def post() -> None:
        barrier.wait()
        responses.append(submit(client, body, **{"Idempotency-Key": "same"}))

    threads = [threading.Thread(target=post) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (contenders - 1) + [201], [r.text for r in responses]
    assert len({response.json()["id"] for response in responses}) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_concurrent_cancels_of_one_job_are_audited_once(client, session_factory, forget_id):
    """50 cancels racing for one running job: every one answers 202 ``cancelling``, and
    the audit log holds one ``job.cancel_requested`` (one cancellation), not one per
    request."""
    job_id = submit(client, job_body(forget_id)).json()["id"]
    with session_factory() as session:
        jobs_repo.claim_job(session, job_id, "w")
    contenders = 50
    barrier = threading.Barrier(contenders)
    responses = []

    def cancel() -> None:
        barrier.wait()
        responses.append(client.post(f"/v1/jobs/{job_id}/cancel"))

    threads = [threading.Thread(target=cancel) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [r.status_code for r in responses] == [202] * contenders, [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"cancelling"}
    audit = client.get("/v1/audit", params={"object_id": job_id}).json()["data"]
    assert [e["action"] for e in audit] == ["job.submitted", "job.cancel_requested"]
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert sum(e["data"]["status"] == "cancelling" for e in events if e["type"] == "status") == 1


@pytest.mark.parametrize(
    "key", ['team"', 'team"x', 'team"[0]', "te'am", "a b", "a[0]", "é", "k" * 65, "a\\b", "a\ud800"]
)
def test_metadata_filter_keys_outside_the_allowed_characters_are_rejected(client, forget_id, key):
    """Keys become JSON paths in SQL: one with a quote or other path syntax must be a
    4xx naming the parameter, never a database error. (SQLite rejects '$."team"x"'
    only once "team" matched in a row, hence the job with metadata.team.)"""
    submit(client, job_body(forget_id))
    name = f"metadata.{key}"
    query = f"{quote(name.encode('utf-8', 'surrogatepass'), safe='')}=x"
    response = client.get(f"/v1/jobs?{query}")
    status, code, param = error_of(response)
    assert (status, code) == (422, "invalid_value")
    assert param == name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert "A-Z a-z 0-9 _ . : -" in response.json()["error"]["message"]


def test_metadata_keys_with_dots_colons_and_hyphens_are_stored_and_filtered(client, forget_id):
    key = "team.sub:unit-1_A"
    job_id = submit(client, job_body(forget_id, metadata={key: "privacy"})).json()["id"]
    submit(client, job_body(forget_id, metadata={"team": "privacy"}))
    response = client.get("/v1/jobs", params={f"metadata.{key}": "privacy"})
    assert response.status_code == 200, response.text
    assert [job["id"] for job in response.json()["data"]] == [job_id]


@pytest.mark.parametrize("key", ['te"am', "a b", "", "k" * 65, "a[0]"])
def test_job_metadata_keys_outside_the_allowed_characters_are_rejected(client, forget_id, key):
    response = submit(client, job_body(forget_id, metadata={key: "x"}))
    assert error_of(response) == (422, "invalid_value", "metadata")
    assert "A-Z a-z 0-9 _ . : -" in response.json()["error"]["message"]
