"""Every cursor is bounded by its column: above the column's range is a 422 (never the
database's out-of-range error as a 500), and ids past 2^31 work on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from core.db.tables import AuditCheckpoint, AuditEntry, JobEvent, JobMetric
from core.db.types import integer_range
from tests.fixtures.api import job_body, register_model, upload_dataset

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1


@pytest.fixture
def job_id(client):
    register_model(client)
    response = client.post("/v1/jobs", json=job_body(upload_dataset(client)))
    assert response.status_code == 201
    return response.json()["id"]


def test_the_event_and_metric_ids_are_64_bit():
    assert integer_range(JobEvent.id)[1] == BIGINT_MAX
    assert integer_range(JobMetric.id)[1] == BIGINT_MAX
    assert integer_range(AuditEntry.id)[1] == BIGINT_MAX
    assert integer_range(AuditCheckpoint.id)[1] == BIGINT_MAX
    assert integer_range(JobMetric.step)[1] == INT_MAX


@pytest.mark.parametrize(
    ("path", "param", "highest"),
    [
        ("/v1/jobs/{job}/events", "after", BIGINT_MAX),
        ("/v1/jobs/{job}/metrics", "after_step", INT_MAX),
        ("/v1/audit", "after", BIGINT_MAX),
        ("/v1/audit/checkpoints", "after", BIGINT_MAX),
    ],
)
def test_a_cursor_above_its_column_is_422_and_at_its_maximum_is_an_empty_page(
    client, job_id, path, param, highest
):
    url = path.format(job=job_id)
    for value in (highest + 1, 2**64, 10**30):
        response = client.get(url, params={param: value})
        assert response.status_code == 422, (value, response.text)
        assert response.json()["error"]["param"] == param
    response = client.get(url, params={param: highest})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []


def test_the_issues_cursor_is_an_empty_page_not_a_500(client, job_id):
    response = client.get(f"/v1/jobs/{job_id}/events", params={"after": 2**31})
    assert response.status_code == 200
    assert response.json()["data"] == []


@pytest.mark.parametrize(
    "path", ["/v1/jobs", "/v1/datasets", "/v1/models", "/v1/deletion-requests"]
)
def test_string_cursors_longer_than_an_id_column_are_422(client, path):
    response = client.get(path, params={"after": "job_" + "a" * 37})  # 41 > String(40)
    assert response.status_code == 422
    assert client.get(path, params={"after": "job_" + "a" * 36}).status_code == 200


def test_events_past_2_to_the_31_are_stored_and_paged(client, job_id, db_engine):
    """Ids beyond the old 32-bit columns: the sequence (Postgres) or rowid (SQLite)
    continues past 2^31, and the cursor reaches them."""
    start = 2**40
    with db_engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT setval(pg_get_serial_sequence('job_events', 'id'), :v)"), {"v": start}
            )
        else:
            connection.execute(
                text(
                    "INSERT INTO job_events (id, job_id, created_at, level, type, message)"
                    " VALUES (:v, :job, '2026-01-01 00:00:00', 'info', 'probe', 'probe')"
                ),
                {"v": start, "job": job_id},
            )
        connection.execute(
            text(
                "INSERT INTO job_events (job_id, created_at, level, type, message)"
                " VALUES (:job, '2026-01-01 00:00:00', 'info', 'probe', 'past 2^40')"
            ),
            {"job": job_id},
        )
    page = client.get(f"/v1/jobs/{job_id}/events", params={"after": start}).json()
    assert [event["message"] for event in page["data"]] == ["past 2^40"]
    assert page["last_id"] == start + 1
