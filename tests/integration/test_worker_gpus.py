"""Workers that own their GPUs, on CPU: a real ``obliviate worker --gpus`` process with
its prefork children, Postgres and Redis. What each child sees (its
``CUDA_VISIBLE_DEVICES``, recorded in the job's ``worker_id``), which queue it serves,
and that duplicate messages are dropped by the parent before they cost a child."""

from __future__ import annotations

import pytest
from sqlalchemy import text, update

from core.db.engine import make_engine, make_session_factory
from core.db.tables import Job
from core.queue import enqueue_job, make_celery
from core.settings import Settings
from tests.fixtures.api import TABLES, make_job
from tests.fixtures.stack import TERMINAL, Stack, stack_env, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path, migrated_postgres, redis_url):
    import redis

    url, engine = migrated_postgres
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    redis.Redis.from_url(redis_url).flushdb()
    home = tmp_path / "home"
    home.mkdir()
    env = stack_env(home, database_url=url, broker_url=redis_url, log_format="json")
    stack = Stack(home, env)
    yield stack
    stack.stop()


def test_each_child_sees_only_its_slot_and_serves_its_queue(stack):
    settings = Settings(_env_file=None, database_url=stack.env["OBLIVIATE_DATABASE_URL"])
    engine = make_engine(settings.database_url, pool_size=1)
    sessions = make_session_factory(engine)
    app = make_celery(Settings(_env_file=None, broker_url=stack.env["OBLIVIATE_BROKER_URL"]))
    with sessions() as session:
        # "demo-target" is not registered here: each job fails right after its claim.
        two_gpu_jobs = [make_job(session, resources={"gpus": 2}).id for _ in range(4)]
        one_gpu_job = make_job(session).id
        finished = make_job(session, resources={"gpus": 2}).id
        session.execute(update(Job).where(Job.id == finished).values(status="succeeded"))
        session.commit()
    duplicates = 20
    for _ in range(duplicates):
        enqueue_job(app, finished, 2)
    for job_id in two_gpu_jobs:
        enqueue_job(app, job_id, 2)
    enqueue_job(app, one_gpu_job, 1)

    worker = stack.start_worker("--gpus", "0-3", "--gpus-per-job", "2")
    wait_until(
        lambda: all(_status(sessions, job_id) in TERMINAL for job_id in two_gpu_jobs),
        timeout=180,
        describe=stack.tail_logs,
        alive=[worker],
    )
    with sessions() as session:
        workers = dict(
            session.execute(
                text("SELECT id, worker_id FROM jobs WHERE id = ANY(:ids)"),
                {"ids": two_gpu_jobs},
            ).all()
        )
    slots = {worker_id.rsplit("/", 1)[1] for worker_id in workers.values()}
    assert slots == {"gpus=0,1", "gpus=2,3"}, workers
    # A fresh child per job: four jobs, four processes.
    assert len({worker_id.rsplit("/", 1)[0] for worker_id in workers.values()}) == 4
    assert _status(sessions, one_gpu_job) == "queued"  # nobody serves one-GPU jobs here
    assert _status(sessions, finished) == "succeeded"

    lines = (stack.home / "worker.log").read_text().splitlines()
    assert all(line.startswith("{") for line in lines if line.strip()), lines[:20]
    records = stack.log_records("worker")
    skipped = [r for r in records if r["logger"] == "worker.dispatch"]
    assert len(skipped) == duplicates and {r["job_id"] for r in skipped} == {finished}
    assert not [r for r in records if r["logger"] == "worker.runner" and "skipping" in r["message"]]
    ended = [r for r in records if r["message"].startswith("job ended")]
    assert sorted(r["job_id"] for r in ended) == sorted(two_gpu_jobs)
    assert {r["attempt"] for r in ended} == {1}
    assert {"time", "level", "logger", "request_id", "tenant"} <= set(ended[0])
    engine.dispose()
    app.close()


def _status(sessions, job_id: str) -> str:
    with sessions() as session:
        return session.scalar(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id})
