"""Which queue a job's message lands in, and which messages the reaper publishes again:
real brokers (Redis, kombu's filesystem transport), no worker."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core.db import jobs
from core.db.tables import Job, JobEvent
from core.db.types import utcnow
from core.queue import (
    QUEUE,
    all_queues,
    enqueue_job,
    make_celery,
    queue_for,
    queues_served,
    waiting_job_ids,
)
from core.reaper import LostMessages, reap_and_requeue
from tests.fixtures.api import make_job, make_settings, upload_dataset


def test_queue_names_and_what_a_worker_serves():
    assert queue_for(1) == QUEUE == "obliviate"  # the name workers already listen on
    assert queue_for(4) == "obliviate.gpus-4"
    assert queues_served(4) == ["obliviate.gpus-4"]
    assert queues_served(2, accept_smaller=True) == ["obliviate", "obliviate.gpus-2"]
    assert all_queues()[0] == "obliviate" and all_queues()[-1] == "obliviate.gpus-8"


@pytest.fixture(params=["redis", "filesystem"])
def broker(request, tmp_path, database_url):
    """Settings with a real broker, and its Celery app; Redis is emptied first."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(url).flushdb()
    else:
        url = ""
    settings = make_settings(
        tmp_path / "home", database_url, broker_url=url, requeue_queued_after_s=5
    )
    app = make_celery(settings)
    yield settings, app
    app.close()


def _remove_every_message(settings, app) -> None:
    """What a broker restart without persistence does to the queues."""
    if settings.is_embedded_broker:
        folder = settings.broker_folder / "queue"
        for name in os.listdir(folder):
            os.remove(folder / name)
    else:
        import redis

        redis.Redis.from_url(settings.broker_url).flushdb()


def test_the_api_publishes_each_job_to_the_queue_for_its_gpus(broker):
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings, app = broker
    with TestClient(create_app(settings)) as client:
        forget = upload_dataset(client)
        client.post("/v1/models", json={"name": "base-model", "source": "org/base-model"})
        body = {"model": "base-model", "forget": forget, "method": "ga"}
        one = client.post("/v1/jobs", json=body).json()["id"]
        four = client.post("/v1/jobs", json={**body, "resources": {"gpus": 4}}).json()
        assert four["resources"] == {"gpus": 4}
        refused = client.post("/v1/jobs", json={**body, "resources": {"gpus": 9}})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "resources.gpus"
    assert waiting_job_ids(app, [queue_for(1)]) == {one}
    assert waiting_job_ids(app, [queue_for(4)]) == {four["id"]}
    assert waiting_job_ids(app, [queue_for(2)]) == set()


def test_the_reaper_republishes_only_messages_missing_from_the_broker(broker, session_factory):
    """10 queued jobs waiting behind others keep their messages: no pass publishes them
    again, however old they are. Once the broker lost its messages, each is published
    again exactly once, after it was seen missing on two passes ``grace`` apart, to the
    queue for its GPU count."""
    settings, app = broker
    with session_factory() as session:
        job_ids = [make_job(session, resources={"gpus": 1 + i % 2}).id for i in range(10)]
        old = utcnow() - timedelta(hours=1)
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=old))
        session.commit()
        gpus = jobs.requested_gpus(session, job_ids)
    for job_id in job_ids:
        assert enqueue_job(app, job_id, gpus[job_id])
    assert waiting_job_ids(app, all_queues()) == set(job_ids)

    clock = [0.0]
    lost = LostMessages(app, grace_s=5, clock=lambda: clock[0])

    def reaper_pass(after_s: float) -> list[str]:
        clock[0] += after_s
        # The jobs look stale by age at every pass; only the broker's contents differ.
        with session_factory() as session:
            session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=old))
            session.commit()
        return reap_and_requeue(session_factory, app, settings, lost)

    assert [reaper_pass(10) for _ in range(4)] == [[], [], [], []]

    _remove_every_message(settings, app)
    assert reaper_pass(10) == []  # first seen missing
    assert reaper_pass(2) == []  # missing, but not for the grace period yet
    assert sorted(reaper_pass(10)) == sorted(job_ids)
    assert [reaper_pass(10) for _ in range(3)] == [[], [], []]

    assert waiting_job_ids(app, [queue_for(1)]) == {j for j in job_ids if gpus[j] == 1}
    assert waiting_job_ids(app, [queue_for(2)]) == {j for j in job_ids if gpus[j] == 2}
    with session_factory() as session:
        requeues = session.scalars(select(JobEvent.job_id).where(JobEvent.type == "requeue")).all()
    assert sorted(requeues) == sorted(job_ids)


def test_a_job_whose_publish_failed_is_published_at_the_next_pass(broker, session_factory):
    settings, app = broker
    with session_factory() as session:
        job_id = make_job(session).id
        jobs.mark_enqueue_failed(session, job_id)
    lost = LostMessages(app, grace_s=5)
    assert reap_and_requeue(session_factory, app, settings, lost) == [job_id]
    assert waiting_job_ids(app, all_queues()) == {job_id}
