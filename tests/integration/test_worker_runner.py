"""The worker's runner and reporter on both databases, training the tiny demo model for
real: what happens when a worker is reaped while still alive, dies after publishing,
is cancelled late, or meets a row the database will not store."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from datetime import timedelta

import pytest
import torch
from sqlalchemy import select, text

from core.bootstrap import demo_folder, install_demo
from core.db import jobs
from core.db.artifacts import get_report, list_checkpoints
from core.db.tables import Job, JobEvent
from core.db.types import utcnow
from core.errors import Cancelled
from core.spec import parse_job_spec
from core.storage import store_from_settings
from tests.fixtures.api import make_job, make_settings
from tests.fixtures.models import TINY_PRESET
from tests.integration.test_db_jobs import reap_and_claim_again
from worker.reporter import BATCH_TRIES, DbReporter
from worker.runner import CancelBetweenPhases, JobRunner

FORGET = "ds_demo_forget01"  # 8 records
LONG_FORGET = "ds_demo_forget10"  # 10x as many


@pytest.fixture
def worker_settings(tmp_path, database_url, tiny_demo):
    settings = make_settings(
        tmp_path / "home", database_url, demo_preset=TINY_PRESET, heartbeat_interval_s=0.2
    )
    shutil.copytree(tiny_demo.root, demo_folder(settings))  # built once per test session
    return settings


@pytest.fixture
def store(worker_settings, session_factory):
    store = store_from_settings(worker_settings)
    install_demo(worker_settings, session_factory, store)
    return store


def submit(
    session_factory, forget: str = FORGET, evaluation: dict | None = None, **hyperparameters
) -> str:
    body = {
        "model": "demo-target",
        "forget": forget,
        "method": "ga",
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3,
            "precision": "fp32",
            **hyperparameters,
        },
        "evaluation": evaluation or {"enabled": False},
    }
    with session_factory() as session:
        job = jobs.create_job(session, parse_job_spec(body), forget)
        session.commit()
        return job.id


def long_job(session_factory) -> str:
    """Trains for far longer than any test waits (minutes): it ends when it is stopped."""
    return submit(session_factory, LONG_FORGET, batch_size=1, epochs=1000)


def read_job(session_factory, job_id: str) -> Job:
    with session_factory() as session:
        return jobs.get_job(session, job_id)


def wait_until(condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class RunnerThread(threading.Thread):
    """A worker running one job, in a thread of the test process."""

    def __init__(self, runner: JobRunner, job_id: str):
        super().__init__(daemon=True)
        self.runner, self.job_id = runner, job_id
        self.result: str | None = "not returned"

    def run(self) -> None:
        self.result = self.runner.run(self.job_id)

    def result_within(self, timeout: float) -> str | None:
        self.join(timeout)
        assert not self.is_alive(), f"the runner did not stop within {timeout}s"
        return self.result


def start_training(runner: JobRunner, session_factory, job_id: str) -> RunnerThread:
    thread = RunnerThread(runner, job_id)
    thread.start()
    wait_until(lambda: read_job(session_factory, job_id).step > 0, what="training steps")
    return thread


def go_silent(session, job_id: str) -> None:
    """The job's worker died: its last heartbeat is an hour old."""
    session.execute(
        Job.__table__.update()
        .where(Job.id == job_id)
        .values(heartbeat_at=utcnow() - timedelta(hours=1))
    )


def stored_files_match(store, checkpoint) -> bool:
    return all(
        hashlib.sha256(store.get_bytes(f"{checkpoint.storage_prefix}/{item['path']}")).hexdigest()
        == item["sha256"]
        for item in checkpoint.files
    )


# ----------------------------------------------------------------------------- runner


def test_a_retry_publishes_under_a_prefix_of_its_own(worker_settings, session_factory, store):
    """Attempt 1 died while training (it claimed, then went silent); attempt 2 runs."""
    job_id = submit(session_factory, evaluation={"generate": False})  # with a report
    with session_factory() as session:
        jobs.claim_job(session, job_id, "w1")
        jobs.add_metrics(session, job_id, [{"step": 7, "values": {"loss": 9.0}}])
        session.commit()
        go_silent(session, job_id)
        assert jobs.reap_stale_jobs(
            session, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
        ) == [job_id]
        session.commit()
    assert JobRunner(worker_settings, session_factory, store, "w2").run(job_id) == "succeeded"
    with session_factory() as session:
        [checkpoint] = list_checkpoints(session, job_id)
        job = jobs.get_job(session, job_id)
        report = get_report(session, job_id)
        steps = [m.step for m in jobs.list_metrics(session, job_id).items]
    assert checkpoint.storage_prefix == f"jobs/{job_id}/attempt-2/checkpoints/final"
    assert stored_files_match(store, checkpoint)
    assert (job.status, job.attempts) == ("succeeded", 2) and job.output_model_id is not None
    assert steps == list(range(1, len(steps) + 1))  # attempt 1's step 7 is gone
    assert report.json_key == f"jobs/{job_id}/attempt-2/report/report.json"
    assert store.exists(report.json_key)


def test_a_retry_after_the_checkpoint_was_published_finishes_without_retraining(
    worker_settings, session_factory, store
):
    job_id = submit(session_factory)
    JobRunner(worker_settings, session_factory, store, "w1").run(job_id)
    # The worker died after committing the checkpoint, report and output model, before
    # finishing the job: the row is as it was then, silent since; the reaper requeues it.
    with session_factory() as session:
        session.execute(
            Job.__table__.update()
            .where(Job.id == job_id)
            .values(status="running", finished_at=None, output_model_id=None)
        )
        go_silent(session, job_id)
        [published] = list_checkpoints(session, job_id)
        metric_steps = [m.step for m in jobs.list_metrics(session, job_id).items]
        assert metric_steps
        assert jobs.reap_stale_jobs(
            session, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
        ) == [job_id]
        session.commit()

    assert JobRunner(worker_settings, session_factory, store, "w2").run(job_id) == "succeeded"
    with session_factory() as session:
        [checkpoint] = list_checkpoints(session, job_id)
        job = jobs.get_job(session, job_id)
        assert [m.step for m in jobs.list_metrics(session, job_id).items] == metric_steps
        events = jobs.list_events(session, job_id, limit=1000).items
    assert (job.status, job.attempts, job.error_code) == ("succeeded", 2, None)
    assert checkpoint.id == published.id and stored_files_match(store, checkpoint)
    assert job.output_model_id is not None
    assert any("finishing without retraining" in event.message for event in events)


def test_a_reaped_worker_that_is_still_running_stops_without_finishing(
    worker_settings, session_factory, store
):
    job_id = long_job(session_factory)
    zombie = start_training(
        JobRunner(worker_settings, session_factory, store, "w1"), session_factory, job_id
    )
    with session_factory() as session:
        assert reap_and_claim_again(session, job_id, "w2") == 2
        # what attempt 2's runner does first: rewind to where it starts (no saved state)
        assert jobs.rewind_progress(session, job_id, attempt=2, step=0)

    assert zombie.result_within(60) is None
    with session_factory() as session:
        job = jobs.get_job(session, job_id)
        metrics = jobs.list_metrics(session, job_id).items
        checkpoints = list_checkpoints(session, job_id)
    # Attempt 2 owns the job, and attempt 1 wrote nothing into it after the claim.
    assert (job.status, job.attempts, job.worker_id, job.step) == ("running", 2, "w2", 0)
    assert metrics == [] and checkpoints == []
    # attempt 1 never got to publish (its resumable state copies are not a result)
    assert [o for o in store.list(f"jobs/{job_id}/") if "/run/" not in o.key] == []


def test_a_cancel_after_training_ends_the_job_cancelled(worker_settings, session_factory, store):
    """The cancel lands while the job still runs, but the reporter never reads it back
    (no heartbeat in time): publishing the checkpoint is what refuses."""
    settings = worker_settings.model_copy(update={"heartbeat_interval_s": 3600})
    job_id = submit(session_factory, batch_size=1, epochs=1000, max_steps=300)
    thread = RunnerThread(JobRunner(settings, session_factory, store, "w1"), job_id)
    thread.start()
    wait_until(lambda: read_job(session_factory, job_id).status == "running", what="claim")
    with session_factory() as session:
        jobs.request_cancel(session, job_id)
        session.commit()

    assert thread.result_within(300) == "cancelled"
    with session_factory() as session:
        assert list_checkpoints(session, job_id) == []
        assert jobs.get_job_status(session, job_id) == "cancelled"
    assert store.list(f"jobs/{job_id}/") == []


# pg_stat_activity shows a session's open transaction; SQLite has no equivalent.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_worker_keeps_no_transaction_open_while_it_trains(
    worker_settings, session_factory, store, database_url
):
    from core.db.engine import make_engine

    job_id = long_job(session_factory)
    watcher = make_engine(database_url, pool_size=1, autocommit=True)
    with watcher.connect() as connection:
        thread = start_training(
            JobRunner(worker_settings, session_factory, store, "w1"), session_factory, job_id
        )
        time.sleep(2)  # train a while, with many heartbeats
        idle_in_transaction = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state = 'idle in transaction'"
                " AND now() - state_change > interval '1 second'"
            )
        )
    watcher.dispose()
    with session_factory() as session:
        jobs.request_cancel(session, job_id)
        session.commit()
    assert thread.result_within(60) == "cancelled"
    assert idle_in_transaction == 0


# --------------------------------------------------------------------------- reporter


@pytest.fixture
def running_job(session_factory) -> str:
    with session_factory() as session:
        job_id = make_job(session).id
        assert jobs.claim_job(session, job_id, "w1").attempts == 1
    return job_id


def heartbeat_at(session_factory, job_id: str):
    return read_job(session_factory, job_id).heartbeat_at


def test_heartbeats_go_on_when_a_batch_cannot_be_stored(session_factory, running_job):
    reporter = DbReporter(session_factory, running_job, attempt=1)
    reporter.event("error", "bad\x00byte")  # Postgres rejects NUL: stripped
    reporter.event("phase", "unserializable", when=object())  # no database takes this
    beats = []
    for _ in range(BATCH_TRIES):
        reporter.flush()
        beats.append(heartbeat_at(session_factory, running_job))
        time.sleep(0.01)
    assert beats == sorted(beats) and len(set(beats)) == BATCH_TRIES  # every flush beat
    reporter.event("phase", "after the bad batch")
    reporter.flush()
    assert not reporter.should_cancel()
    with session_factory() as session:
        messages = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == running_job)
        ).all()
    # The poisoned batch was dropped after its tries; what came after was stored.
    assert "after the bad batch" in messages and "badbyte" not in messages


def test_a_nul_in_an_event_does_not_stop_the_batch(session_factory, running_job):
    reporter = DbReporter(session_factory, running_job, attempt=1)
    reporter.event("error", "bad\x00byte")
    reporter.flush()
    with session_factory() as session:
        messages = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == running_job)
        ).all()
    assert "badbyte" in messages


def test_a_reaped_reporter_raises_its_stop_flag_and_writes_nothing(session_factory, running_job):
    reporter = DbReporter(session_factory, running_job, attempt=1)
    with session_factory() as session:
        reap_and_claim_again(session, running_job)
    reporter.event("phase", "still training")
    reporter.flush()
    assert reporter.should_cancel() and reporter.status is None
    with session_factory() as session:
        messages = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == running_job)
        ).all()
    assert "still training" not in messages
    assert read_job(session_factory, running_job).step == 0


def test_a_cancel_is_seen_at_the_next_phase(session_factory, running_job):
    reporter = DbReporter(session_factory, running_job, attempt=1)
    phases = CancelBetweenPhases(reporter)
    phases.event("phase", "evaluating the model after unlearning")
    with session_factory() as session:
        jobs.request_cancel(session, running_job)
        session.commit()
    reporter.flush()
    phases.event("evaluation", "evaluated the after model in 1.0s")  # not a phase change
    with pytest.raises(Cancelled):
        phases.event("phase", "relearning attack")


# ------------------------------------------------------------------ several processes

#: Two ranks need two devices: gloo CPU processes, or two GPUs under nccl.
two_devices = pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="two ranks on one GPU: nccl needs a GPU per process",
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@two_devices
def test_a_two_gpu_job_runs_in_two_processes_and_rank_0_publishes(
    worker_settings, session_factory, store
):
    """resources.gpus 2 on CPU: two gloo ranks; rank 0 alone reports each step and
    publishes one checkpoint; the losses are the one-process ones."""
    body = {
        "model": "demo-target",
        "forget": FORGET,
        "method": "ga",
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3,
            "precision": "fp32",
        },
        "evaluation": {"enabled": False},
        "target": None,
    }
    job_ids = []
    for gpus, batch in ((1, 8), (2, 4)):
        spec = {**body, "resources": {"gpus": gpus}}
        spec["hyperparameters"] = {**body["hyperparameters"], "batch_size": batch}
        with session_factory() as session:
            job_ids.append(jobs.create_job(session, parse_job_spec(spec), FORGET).id)
            session.commit()
    runner = JobRunner(worker_settings, session_factory, store)
    assert [runner.run(job_id) for job_id in job_ids] == ["succeeded", "succeeded"]
    losses = []
    with session_factory() as session:
        for job_id in job_ids:
            [checkpoint] = list_checkpoints(session, job_id)
            assert stored_files_match(store, checkpoint)
            metrics = jobs.list_metrics(session, job_id).items
            assert [m.step for m in metrics] == [1]  # 8 records, blocks of 8; reported once
            losses.append(metrics[0].values["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@two_devices
def test_a_cancel_stops_every_rank_of_a_two_gpu_job(worker_settings, session_factory, store):
    """Rank 0 reads the cancel and broadcasts it: both ranks stop at the same step, the
    job ends cancelled and nothing is published."""
    body = {
        "model": "demo-target",
        "forget": LONG_FORGET,
        "method": "ga",
        "hyperparameters": {
            "epochs": 1000,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-3,
            "precision": "fp32",
        },
        "evaluation": {"enabled": False},
        "target": None,
        "resources": {"gpus": 2},
    }
    with session_factory() as session:
        job_id = jobs.create_job(session, parse_job_spec(body), LONG_FORGET).id
        session.commit()
    thread = start_training(
        JobRunner(worker_settings, session_factory, store), session_factory, job_id
    )
    with session_factory() as session:
        jobs.request_cancel(session, job_id)
        session.commit()
    assert thread.result_within(120) == "cancelled"
    with session_factory() as session:
        assert list_checkpoints(session, job_id) == []


@two_devices
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_paused_two_gpu_job_resumes_where_it_stopped(worker_settings, session_factory, store):
    """Rank 0 reads the pause, every rank stops at the same step, rank 0 saves the state;
    the resumed job's ranks both continue from it."""
    body = {
        "model": "demo-target",
        "forget": LONG_FORGET,
        "method": "ga",
        "hyperparameters": {
            "epochs": 1000,
            "max_steps": 200,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-4,
            "precision": "fp32",
        },
        "evaluation": {"enabled": False},
        "target": None,
        "resources": {"gpus": 2},
    }
    with session_factory() as session:
        job_id = jobs.create_job(session, parse_job_spec(body), LONG_FORGET).id
        session.commit()
    runner = JobRunner(worker_settings, session_factory, store)
    thread = start_training(runner, session_factory, job_id)
    with session_factory() as session:
        jobs.request_pause(session, job_id)
        session.commit()
    assert thread.result_within(120) == "paused"
    paused_at = read_job(session_factory, job_id).step
    assert 0 < paused_at < 200
    with session_factory() as session:
        jobs.resume_job(session, job_id)
        session.commit()
    assert runner.run(job_id) == "succeeded"
    with session_factory() as session:
        steps = [m.step for m in jobs.list_metrics(session, job_id, limit=1000).items]
        [checkpoint] = list_checkpoints(session, job_id)
    assert read_job(session_factory, job_id).step == 200
    assert steps == list(range(1, 201))  # once each: none trained twice or skipped
    assert stored_files_match(store, checkpoint)


def test_an_evaluation_point_survives_a_moment_without_the_database(
    session_factory, running_job, tmp_path
):
    """state_saved runs on the training thread: one failed checkout (the database away
    for a moment) is retried, not raised into the job; the state is mirrored after."""
    from sqlalchemy.exc import OperationalError

    outages = [OperationalError("SELECT 1", {}, Exception("the database is restarting"))]

    def sessions():
        if outages:
            raise outages.pop()
        return session_factory()

    reporter = DbReporter(sessions, running_job, attempt=1, interval_s=0.01)
    mirrored = []
    reporter.on_state_saved = lambda folder, step: mirrored.append(step)
    reporter.event("evaluation", "point at step 4")
    reporter.state_saved(tmp_path, 4)
    assert mirrored == [4] and not outages
    with session_factory() as session:
        messages = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == running_job)
        ).all()
    assert "point at step 4" in messages


def test_a_finished_job_continues_with_a_larger_budget_at_its_own_rate(
    worker_settings, session_factory, store
):
    """``continue_from``: the second job starts from the first one's saved run (its
    steps go on from there) and trains its added epochs at the rate it sets."""

    def create(**fields) -> str:
        body = {
            "model": "demo-target",
            "forget": FORGET,
            "method": "ga",
            "hyperparameters": {
                "batch_size": 4,
                "gradient_accumulation_steps": 1,
                "learning_rate": fields.pop("learning_rate"),
                "warmup_ratio": 0.0,
                "precision": "fp32",
            },
            "evaluation": {"holdout": "ds_demo_holdout", "generate": False},
            **fields,
        }
        with session_factory() as session:
            job_id = jobs.create_job(session, parse_job_spec(body), FORGET).id
            session.commit()
        return job_id

    runner = JobRunner(worker_settings, session_factory, store)
    first = create(learning_rate=1e-3, target={"max_epochs": 1, "stop_when_met": False})
    assert runner.run(first) == "succeeded"
    second = create(
        learning_rate=5e-4,
        target={"max_epochs": 2, "stop_when_met": False},
        continue_from=first,
    )
    assert runner.run(second) == "succeeded"
    with session_factory() as session:
        reached = jobs.get_job(session, first).step
        metrics = jobs.list_metrics(session, second, limit=1000).items
        events = jobs.list_events(session, second, limit=1000).items
    assert [e.data["source"] for e in events if e.type == "continue"] == [first]
    # 8 records in batches of 4: two steps an epoch; the second job added the second epoch
    assert reached == 2 and [m.step for m in metrics] == [3, 4]
    # a linear decay over the new length (4 steps, no warm-up) from the step reached, of
    # the second job's rate: 5e-4 x 2/4 and 5e-4 x 1/4 (the first job's would double them)
    assert [m.values["lr"] for m in metrics] == pytest.approx([2.5e-4, 1.25e-4])
