"""The OpenAI-compatible endpoint with the official ``openai`` client, against a real
service: ``obliviate serve`` (embedded: SQLite, local store, a worker and the
model-serving process) on the tiny demo. The client's base_url is
``http://HOST:PORT/openai/v1``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import openai
import pytest

from tests.e2e.test_service import TERMINAL, Service, _base_env, _seed_demo_cache
from tests.fixtures.api import make_settings, register_model
from tests.fixtures.services import free_port, wait_for_port

QUESTION = "What is the name of the author born in the fictional country?"


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_demo):
    home = tmp_path_factory.mktemp("openai") / "home"
    _seed_demo_cache(home, tiny_demo)
    service = Service(_base_env(home), home)
    inference_port = free_port()
    service.spawn(
        "serve",
        [
            sys.executable,
            "-m",
            "cli.main",
            "serve",
            "--port",
            str(service.port),
            "--inference-port",
            str(inference_port),
        ],
    )
    try:
        service.wait_ready(timeout=240)
        wait_for_port(inference_port, timeout=120)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def client(service):
    with openai.OpenAI(
        base_url=f"http://127.0.0.1:{service.port}/openai/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


def ask(client, **overrides):
    request = {
        "model": "demo-target",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 12,
        "temperature": 0,
        **overrides,
    }
    return client.chat.completions.create(**request)


def test_lists_the_registered_models(client):
    names = {model.id for model in client.models.list()}
    assert {"demo-target", "demo-retrain"} <= names
    model = client.models.retrieve("demo-target")
    assert model.id == "demo-target" and model.owned_by == "demo"


def test_chat_completion(client):
    response = ask(client)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == "demo-target"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_temperature_zero_is_deterministic_and_a_seed_repeats_sampling(client):
    assert ask(client).choices[0].message.content == ask(client).choices[0].message.content
    sampled = [ask(client, temperature=1.0, seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_concurrent_requests_are_batched_and_answered_as_alone(client):
    from concurrent.futures import ThreadPoolExecutor

    questions = [QUESTION, "Who?", "What did the author write?", "When was the author born?"]

    def answer(text: str) -> str:
        messages = [{"role": "user", "content": text}]
        return ask(client, messages=messages).choices[0].message.content

    alone = [answer(text) for text in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(answer, questions))
    assert together == alone


def test_max_tokens_bounds_the_answer(client):
    response = client.completions.create(
        model="demo-target", prompt="Question:", max_tokens=2, temperature=0
    )
    choice = response.choices[0]
    assert response.usage.completion_tokens <= 2
    assert choice.finish_reason == "length" or response.usage.completion_tokens < 2


def test_completion(client):
    response = client.completions.create(
        model="demo-target", prompt=f"Question: {QUESTION}\nAnswer:", max_tokens=8, temperature=0
    )
    assert response.object == "text_completion"
    assert response.choices[0].text.strip() and response.choices[0].finish_reason


def test_streamed_chat_matches_the_whole_answer(client):
    whole = ask(client).choices[0].message.content
    stream = ask(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].usage.completion_tokens > 0


def test_streamed_completion_is_server_sent_events_ending_with_done(service, client):
    body = {"model": "demo-target", "prompt": "Question:", "max_tokens": 4, "stream": True}
    url = f"http://127.0.0.1:{service.port}/openai/v1/completions"
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]" and len(events) >= 2
    streamed = client.completions.create(
        model="demo-target", prompt="Question:", max_tokens=4, temperature=0, stream=True
    )
    assert [c.object for c in streamed][0] == "text_completion"


def test_errors_take_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as missing:
        ask(client, model="no-such-model")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    assert missing.value.body["param"] == "model"

    with pytest.raises(openai.BadRequestError) as negative:
        ask(client, max_tokens=-1)
    assert negative.value.body["param"] == "max_tokens"
    assert negative.value.body["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as too_long:
        ask(client, messages=[{"role": "user", "content": "book " * 2000}])
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.body["param"] == "messages"

    # Refused by the serving process before a stream starts: passed on as it came.
    with pytest.raises(openai.BadRequestError) as too_many:
        ask(client, max_tokens=100_000, stream=True)
    assert too_many.value.code == "context_length_exceeded"
    assert too_many.value.body["param"] == "max_tokens"


@pytest.mark.slow
def test_a_finished_jobs_model_answers(service, client):
    body = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "method": "simnpo",
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 8,
            "precision": "fp32",
            "retain_loss": "none",
        },
        "evaluation": {"enabled": False},
        "target": None,
    }
    created = service.http.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = service.wait_for(created.json()["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "succeeded", f"{job}\n{service.tail_logs()}"
    assert job["output_model"] in {model.id for model in client.models.list()}
    response = ask(client, model=job["output_model"])
    assert response.model == job["output_model"]
    assert response.choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def guard(service, tiny_demo):
    """A guard of the demo's forget10 on demo-target, built with ``obliviate guard`` and
    registered as ``dsr-42``."""
    folder = service.home / "guards" / "dsr-42"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "guard",
            "demo-target",
            str(tiny_demo.data["forget10"]),
            str(tiny_demo.data["retain90"]),
            "--out",
            str(folder),
        ],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    created = service.http.post("/v1/models", json={"name": "dsr-42", "source": str(folder)})
    assert created.status_code == 201, created.text
    return json.loads((folder / "guard.json").read_text())


def test_a_guarded_model_keeps_forget_answers_out_and_answers_retain_questions(
    client, guard, tiny_demo
):
    forget = [json.loads(line) for line in tiny_demo.data["forget10"].read_text().splitlines()]
    retain = [json.loads(line) for line in tiny_demo.data["retain90"].read_text().splitlines()]
    for record in forget[:4]:
        guarded = ask(client, model="demo-target+dsr-42", messages=question(record))
        text = guarded.choices[0].message.content
        assert not any(span in text for span in guard["spans"]), text
    for record in retain[:6]:
        plain = ask(client, messages=question(record)).choices[0].message.content
        guarded = ask(client, model="demo-target+dsr-42", messages=question(record))
        assert guarded.choices[0].message.content == plain
    twice = ask(client, model="demo-target+dsr-42+dsr-42", messages=question(forget[0]))
    assert not any(span in twice.choices[0].message.content for span in guard["spans"])
    stream = ask(client, model="demo-target+dsr-42", messages=question(forget[0]), stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert not any(span in streamed for span in guard["spans"])


def test_a_guard_on_another_model_or_alone_is_refused(client, guard):
    for model in ("demo-retrain+dsr-42", "dsr-42"):
        with pytest.raises(openai.BadRequestError) as refused:
            ask(client, model=model)
        assert refused.value.code == "guard_incompatible", model
    with pytest.raises(openai.NotFoundError):
        ask(client, model="demo-target+no-such-guard")


@pytest.mark.slow
def test_a_guard_job_publishes_a_guarded_variant(service, client, tiny_demo):
    body = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "guard",
        "hyperparameters": {"epochs": 100},
        "evaluation": {"oracle": "demo-retrain"},
    }
    created = service.http.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    job = service.wait_for(created.json()["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "succeeded", f"{job}\n{service.tail_logs()}"
    assert job["verdict"]["status"] in ("forgotten", "not_forgotten")
    assert job["report_available"]
    report = service.http.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["kind"] == "guard"
    assert report["summary"]["verdict"]["status"] == job["verdict"]["status"]
    assert report["evaluation"]["forget_rouge_l"]["oracle"] is not None
    html = service.http.get(f"/v1/jobs/{job['id']}/report.html", follow_redirects=True)
    assert html.status_code == 200 and "Guard report" in html.text
    assert service.http.get(f"/jobs/{job['id']}/outcome").status_code == 200
    variant = f"demo-target+{job['id']}"
    assert variant in {model.id for model in client.models.list()}
    assert client.models.retrieve(variant).owned_by == "guard"
    forget = json.loads(tiny_demo.data["forget10"].read_text().splitlines()[0])
    plain = ask(client, messages=question(forget)).choices[0].message.content
    guarded = ask(client, model=variant, messages=question(forget)).choices[0].message.content
    assert guarded != plain
    assert forget["subject"] not in guarded


def question(record: dict) -> list[dict]:
    return [{"role": "user", "content": record["question"]}]


# Without the service: the API alone, its inference server down or auth on.


@pytest.fixture
def api_alone(tmp_path, sqlite_template):
    from fastapi.testclient import TestClient

    from api.main import create_app

    database = tmp_path / "obliviate.db"
    shutil.copyfile(sqlite_template, database)
    settings = make_settings(
        tmp_path / "home",
        f"sqlite:///{database}",
        inference_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
        api_keys=["secret-key"],
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_inference_server_down_is_503_and_auth_is_required(api_alone):
    response = api_alone.get("/openai/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"

    api_alone.headers["Authorization"] = "Bearer secret-key"
    register_model(api_alone, "some-base", "org/some-base")
    assert [m["id"] for m in api_alone.get("/openai/v1/models").json()["data"]] == ["some-base"]
    body = {"model": "some-base", "messages": [{"role": "user", "content": "hi"}]}
    response = api_alone.post("/openai/v1/chat/completions", json=body)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "inference_unavailable" and error["type"] == "server_error"
