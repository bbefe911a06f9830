"""The fault suite's service: Postgres (a database of its own, since the suite
terminates every connection to it), a redis-server of its own (the suite kills it), a
local object store, the tiny demo, the API under uvicorn, and ``obliviate worker``
processes that the tests start and kill.

Timings are shortened so a fault is noticed in seconds: heartbeats every 0.5 s, a job
silent for 5 s is reaped, the reaper runs every second, and a queued job's message
counts as lost after 5 s missing from Redis.

Trial counts: a CI run does a few of each (``OBLIVIATE_FAULT_TRIALS`` sets them); the
soak mode for manual runs (``OBLIVIATE_SOAK=1``, or ``pytest tests/faults --soak``)
does 20 kill trials and larger batches. Each test records its trials; the counts and
outcomes are printed at the end of the run (``fault suite`` section).
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest

from tests.fixtures.models import TINY_PRESET
from tests.fixtures.stack import RedisServer, Stack, stack_env

SETTINGS = {
    "heartbeat_interval_s": 0.5,
    "stale_after_s": 5,
    "reaper_interval_s": 1,
    "requeue_queued_after_s": 5,
    "max_attempts": 25,
    "demo_preset": TINY_PRESET,
    "log_format": "json",
}

#: A small job on the tiny demo: 160 optimizer steps (long enough to be killed mid-way on
#: an idle machine too), no evaluation.
FAULT_JOB = {
    "model": "demo-target",
    "forget": "ds_demo_forget10",
    "retain": "ds_demo_retain90",
    "method": "simnpo",
    "hyperparameters": {
        "learning_rate": 1e-3,
        "epochs": 40,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "precision": "fp32",
    },
    "evaluation": {"enabled": False},
}

OUTCOMES: list[str] = []


def soak() -> bool:
    return os.environ.get("OBLIVIATE_SOAK", "") not in ("", "0", "false")


def trials(ci: int, soak_trials: int) -> int:
    """How many trials a test runs: OBLIVIATE_FAULT_TRIALS, else the soak or CI count."""
    if os.environ.get("OBLIVIATE_FAULT_TRIALS"):
        return int(os.environ["OBLIVIATE_FAULT_TRIALS"])
    return soak_trials if soak() else ci


def record(line: str) -> None:
    """A line for the end-of-run summary (also printed now, for -s runs)."""
    OUTCOMES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter):
    if OUTCOMES:
        terminalreporter.section("fault suite")
        for line in OUTCOMES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def fault_database(postgres_url):
    import psycopg

    from tests.fixtures.services import POSTGRES_ADMIN_URL

    name = f"obliviate_faults_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory, tiny_demo, fault_database):
    """The API with the demo installed, and a Redis of the suite's own; no worker (each
    test starts its own and leaves none running)."""
    from core.bootstrap import install_demo
    from core.db import make_engine, make_session_factory
    from core.db.migrate import upgrade
    from core.settings import Settings
    from core.storage import store_from_settings

    root = tmp_path_factory.mktemp("faults")
    home = root / "home"
    shutil.copytree(tiny_demo.root, home / "demo" / TINY_PRESET)
    redis = RedisServer(root / "redis").start()
    env = stack_env(home, database_url=fault_database, broker_url=redis.url, **SETTINGS)
    settings = Settings(
        _env_file=None,
        home=home,
        database_url=fault_database,
        broker_url=redis.url,
        demo_preset=TINY_PRESET,
    )
    upgrade(fault_database)
    engine = make_engine(fault_database, pool_size=1)
    install_demo(settings, make_session_factory(engine), store_from_settings(settings))
    engine.dispose()
    stack = Stack(home, env)
    stack.redis = redis
    stack.settings = settings
    stack.start_api()
    try:
        yield stack
    finally:
        stack.stop()
        redis.kill()


@pytest.fixture
def stack(fault_stack):
    """The suite's stack for one test: workers it started are gone afterwards, and
    Redis is up again."""
    yield fault_stack
    for worker in list(fault_stack.workers):
        fault_stack.kill_worker(worker)
    if fault_stack.redis.process.poll() is not None:
        fault_stack.redis.start()
