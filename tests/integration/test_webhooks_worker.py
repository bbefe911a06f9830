"""The worker sends webhooks: a real ``obliviate worker`` process, embedded (SQLite and
the filesystem broker) and production-shaped (Postgres and Redis). A job that fails in
the worker's child writes its delivery in the transaction that fails it; the worker's
parent sends it, signed, to a receiver on loopback."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text

from core.db import webhooks
from core.db.engine import make_engine, make_session_factory
from core.db.migrate import upgrade
from core.db.tables import WebhookDelivery
from core.queue import enqueue_job, make_celery
from core.settings import Settings
from core.webhooks.signing import verify_signature
from tests.fixtures.api import TABLES, make_job
from tests.fixtures.stack import Stack, stack_env, wait_until
from tests.integration.test_webhooks import Receiver

pytestmark = pytest.mark.slow

SECRET = "whsec_worker-test"
#: a database of its own on the test Redis, so nothing else's messages are touched
REDIS_DB = "redis://127.0.0.1:6379/9"


@pytest.fixture(params=["embedded", "production"])
def deployment(request, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    if request.param == "embedded":
        database_url = f"sqlite:///{home / 'obliviate.db'}"
        upgrade(database_url)
        settings = {"database_url": database_url}
    else:
        url, engine = request.getfixturevalue("migrated_postgres")
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        settings = {"database_url": url, "broker_url": REDIS_DB}
    env = stack_env(home, webhook_allow_private="true", webhook_interval_s="0.2", **settings)
    stack = Stack(home, env)
    yield stack, Settings(_env_file=None, home=home, **settings)
    stack.stop()


def test_the_worker_sends_the_delivery_of_a_job_it_failed(deployment):
    stack, settings = deployment
    endpoint = Receiver()
    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_session_factory(engine)
    try:
        with sessions() as session:
            webhook = webhooks.create_webhook(
                session, url=endpoint.url(), events=["job.failed"], secret=SECRET, description=None
            )
            webhook_id = webhook.id
            session.commit()
            # "demo-target" is not registered here: the job fails right after its claim.
            job_id = make_job(session).id
        enqueue_job(make_celery(settings), job_id)
        worker = stack.start_worker()
        wait_until(lambda: endpoint.requests, timeout=120, describe=stack.tail_logs, alive=[worker])
        [request] = endpoint.requests
        assert request["headers"]["Obliviate-Event"] == "job.failed"
        assert verify_signature(SECRET, request["headers"]["Obliviate-Signature"], request["body"])
        event = json.loads(request["body"])
        assert event["data"]["job"]["id"] == job_id and event["data"]["job"]["status"] == "failed"

        def delivered():
            with sessions() as session:
                return (
                    session.scalar(
                        select(WebhookDelivery.status).where(
                            WebhookDelivery.webhook_id == webhook_id
                        )
                    )
                    == "delivered"
                )

        wait_until(delivered, timeout=30, describe=stack.tail_logs)
    finally:
        endpoint.close()
        engine.dispose()
