"""Live streams over a real server: a job's stream and the job-wide stream follow what
the worker side writes to the database, resume with Last-Event-ID without gaps or
duplicates, and end when the job does."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest

from core.db import jobs
from obliviate_client.sse import iter_sse
from tests.fixtures.api import make_job


class StreamReader:
    """Reads one SSE response on a thread; the test takes events as they come."""

    def __init__(self, url: str, headers: dict | None = None, params: dict | None = None):
        self.events: queue.Queue = queue.Queue()
        self.status: int | None = None
        self.closed = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30, connect=5))
        self._args = (url, headers or {}, params or {})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        url, headers, params = self._args
        try:
            with self._client.stream("GET", url, headers=headers, params=params) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    self.events.put(("error", response.read().decode()))
                    return
                for message in iter_sse(response.iter_lines()):
                    self.events.put((message.event, message))
        except httpx.HTTPError:
            pass
        finally:
            self.closed.set()

    def take(self, kind: str, predicate=lambda data: True, timeout: float = 15) -> tuple:
        """The next event of ``kind`` whose data matches; others before it are skipped
        (and returned second, for assertions on them)."""
        skipped = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                event, message = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} event in {timeout}s; saw {skipped}") from None
            if event == "error":
                raise AssertionError(message)
            data = json.loads(message.data)
            if event == kind and predicate(data):
                return message, data, skipped
            skipped.append((event, data))

    def until(self, done, timeout: float = 15) -> list[tuple[str, dict, object]]:
        """Every event until ``done(events so far)`` holds, in arrival order."""
        seen: list[tuple[str, dict, object]] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            try:
                event, message = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"gave up after {timeout}s; saw {seen}") from None
            if event == "error":
                raise AssertionError(message)
            seen.append((event, json.loads(message.data), message))
        return seen

    def drain(self, wait: float = 0.5) -> list[tuple[str, dict]]:
        time.sleep(wait)
        out = []
        while not self.events.empty():
            event, message = self.events.get()
            out.append((event, json.loads(message.data)))
        return out

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=5)


@pytest.fixture
def readers():
    opened: list[StreamReader] = []

    def open_reader(*args, **kwargs) -> StreamReader:
        reader = StreamReader(*args, **kwargs)
        opened.append(reader)
        return reader

    yield open_reader
    for reader in opened:
        reader.close()


def _metric(step: int) -> dict:
    return {"step": step, "epoch": step / 10, "values": {"loss": 1.0 / step}}


def test_a_job_stream_follows_the_job_until_it_ends(live_server, session_factory, readers):
    with session_factory() as session:
        job_id = make_job(session).id
    stream = readers(f"{live_server.url}/v1/jobs/{job_id}/stream")
    _, snapshot, _ = stream.take("job")
    assert snapshot["id"] == job_id and snapshot["status"] == "queued"
    _, queued, _ = stream.take("event")
    assert queued["data"]["status"] == "queued" and queued["job_id"] == job_id

    with session_factory() as session:
        attempt = jobs.claim_job(session, job_id, "worker-1").attempts
    _, running, _ = stream.take("job", lambda job: job["status"] == "running")
    assert running["attempts"] == 1

    with session_factory() as session:
        jobs.heartbeat(session, job_id, attempt=attempt, step=2, total_steps=4)
        jobs.add_metrics(session, job_id, [_metric(1), _metric(2)])
        jobs.add_events(session, job_id, [{"type": "phase", "message": "unlearning"}])
        session.commit()
    seen = stream.until(
        lambda seen: (
            sum(kind == "metric" for kind, _, _ in seen) == 2
            and any(kind == "job" and data["progress"]["step"] == 2 for kind, data, _ in seen)
        )
    )
    metrics = [(data, message) for kind, data, message in seen if kind == "metric"]
    assert [data["step"] for data, _ in metrics] == [1, 2]
    assert metrics[0][0]["values"] == {"loss": 1.0}
    assert f"metric={metrics[0][0]['id']}" in metrics[0][1].id
    progressed = [data for kind, data, _ in seen if kind == "job"][-1]
    assert progressed["progress"]["fraction"] == 0.5

    with session_factory() as session:
        jobs.add_metrics(session, job_id, [_metric(3), _metric(4)])
        session.commit()
        jobs.finish_job(session, job_id, "succeeded", attempt=attempt)
    _, ended, skipped = stream.take("end")
    assert [data["step"] for kind, data in skipped if kind == "metric"] == [3, 4]
    assert any(kind == "job" and data["status"] == "succeeded" for kind, data in skipped)
    assert stream.closed.wait(5), "the stream did not close after end"


def test_a_job_stream_resumes_after_the_last_event_id(live_server, session_factory, readers):
    with session_factory() as session:
        job = make_job(session)
        attempt = jobs.claim_job(session, job.id, "worker-1").attempts
        jobs.add_metrics(session, job.id, [_metric(step) for step in range(1, 6)])
        session.commit()
    stream = readers(f"{live_server.url}/v1/jobs/{job.id}/stream")
    for step in range(1, 4):
        message, data, _ = stream.take("metric")
        assert data["step"] == step
    resume_from = message.id
    stream.close()

    with session_factory() as session:
        jobs.add_metrics(session, job.id, [_metric(6)])
        session.commit()
    resumed = readers(
        f"{live_server.url}/v1/jobs/{job.id}/stream", headers={"Last-Event-ID": resume_from}
    )
    _, snapshot, _ = resumed.take("job")
    assert snapshot["status"] == "running"
    steps = [resumed.take("metric")[1]["step"] for _ in range(3)]
    assert steps == [4, 5, 6]  # no gap, no repeat
    events = [kind for kind, _ in resumed.drain()]
    assert "metric" not in events

    with session_factory() as session:
        jobs.finish_job(session, job.id, "failed", {"code": "boom"}, attempt=attempt)
    resumed.take("end")
    # A finished job's stream replays and ends at once.
    replay = readers(f"{live_server.url}/v1/jobs/{job.id}/stream")
    _, final, skipped = replay.take("end")
    assert [d["step"] for kind, d in skipped if kind == "metric"] == [1, 2, 3, 4, 5, 6]
    assert skipped[0][0] == "job" and skipped[0][1]["status"] == "failed"


def test_the_job_wide_stream_starts_now_and_resumes(live_server, session_factory, readers):
    with session_factory() as session:
        old = make_job(session)
    stream = readers(f"{live_server.url}/v1/jobs/stream")
    ready, _, _ = stream.take("ready")
    assert "event=" in ready.id and "metric=" in ready.id and "job=" in ready.id

    with session_factory() as session:
        new = make_job(session)
    _, created, skipped = stream.take("job", lambda job: job["id"] == new.id)
    assert created["status"] == "queued"
    message, event, more = stream.take("event", lambda event: event["job_id"] == new.id)
    # Rows from before the stream started are not sent (a snapshot of a job that changed
    # just before may be: state is sent at least once, never lost).
    assert all(data.get("job_id") != old.id for kind, data in skipped + more if kind == "event")
    stream.close()

    with session_factory() as session:
        jobs.request_cancel(session, new.id)
        session.commit()
    resumed = readers(f"{live_server.url}/v1/jobs/stream", params={"last_event_id": message.id})
    resumed.take("ready")
    _, cancelled, _ = resumed.take("job", lambda job: job["id"] == new.id)
    assert cancelled["status"] == "cancelled"
    _, missed, _ = resumed.take("event")
    assert missed["id"] > event["id"] and missed["data"]["status"] == "cancelled"

    only_jobs = readers(f"{live_server.url}/v1/jobs/stream", params={"types": "job"})
    only_jobs.take("ready")
    with session_factory() as session:
        make_job(session)
    only_jobs.take("job")
    assert all(kind == "job" for kind, _ in only_jobs.drain())


def test_stream_errors_are_answered_before_streaming(live_server, session_factory):
    with session_factory() as session:
        job_id = make_job(session).id
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        missing = http.get("/v1/jobs/job_01aaaaaaaaaaaaaaaaaaaaaaaa/stream")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
        bad = http.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "event=x"})
        assert bad.status_code == 422
        assert bad.json()["error"]["param"] == "Last-Event-ID"
        kind = http.get("/v1/jobs/stream", params={"types": "nonsense"})
        assert kind.status_code == 422 and kind.json()["error"]["param"] == "types.0"
