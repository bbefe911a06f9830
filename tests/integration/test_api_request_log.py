"""One log line per request, with a request id the caller may choose."""

from __future__ import annotations

import json
import logging

from core.logs import configure_logging


def _request_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "obliviate.request"]


def test_a_request_id_is_honoured_echoed_and_logged(client, caplog):
    caplog.set_level(logging.INFO)
    response = client.get("/v1/methods", headers={"X-Request-ID": "req-42.a:b"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "req-42.a:b"
    [record] = _request_records(caplog)
    assert record.request_id == "req-42.a:b" and record.status == 200
    assert record.route == "/v1/methods" and record.method == "GET"
    assert record.principal == "anonymous" and record.tenant == "default"  # open mode


def test_an_unusable_request_id_is_replaced(client, caplog):
    caplog.set_level(logging.INFO)
    for bad in ("", "x" * 129, 'a"b', "a b", "{}"):
        response = client.get("/healthz", headers={"X-Request-ID": bad})
        made = response.headers["x-request-id"]
        assert made != bad and len(made) == 32
    generated = client.get("/nowhere")
    assert generated.status_code == 404 and len(generated.headers["x-request-id"]) == 32
    statuses = [r.status for r in _request_records(caplog)]
    assert statuses == [200] * 5 + [404]


def test_lines_written_during_a_request_carry_its_id(client, caplog, monkeypatch):
    """Also from the database threads the request's work runs on."""
    import api.services.jobs as service

    original = service.get_job

    def logging_get_job(session, job_id):
        logging.getLogger("test.service").warning("looking up %s", job_id)
        return original(session, job_id)

    monkeypatch.setattr(service, "get_job", logging_get_job)
    caplog.set_level(logging.INFO)
    client.get("/v1/jobs/job_00000000000000000000000000", headers={"X-Request-ID": "trace-1"})
    [inner] = [r for r in caplog.records if r.name == "test.service"]
    assert inner.request_id == "trace-1"
    assert _request_records(caplog)[-1].status == 404


def test_json_lines_have_the_context_fields(capsys):
    from core.logs import bound

    configure_logging("json")
    try:
        with bound(job_id="job_1", attempt=2):
            logging.getLogger("test.json").info("phase: training", extra={"event": "phase"})
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        configure_logging("text")
    record = json.loads(line)
    assert record["message"] == "phase: training" and record["level"] == "INFO"
    assert (record["job_id"], record["attempt"], record["event"]) == ("job_1", 2, "phase")
    assert record["request_id"] is None and record["tenant"] is None
    assert record["time"].endswith("+00:00")
