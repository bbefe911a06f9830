"""Job state transitions on both databases: every change is a conditional UPDATE, so
racing processes cannot both win."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from core.db import jobs
from core.db.tables import Job, JobEvent
from core.db.types import utcnow
from core.errors import Conflict, NotFound
from tests.fixtures.api import make_job


def statuses_of(session, job_id) -> list[str]:
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "status")
    )
    return [event.data["status"] for event in events]


def test_create_job_records_spec_hyperparameters_and_a_status_event(db_session):
    job = make_job(db_session, metadata={"team": "privacy"}, seed=2**32 - 1)
    assert job.id.startswith("job_") and job.status == "queued"
    assert job.hyperparameters["beta"] == 0.1  # NPO's default, resolved
    assert job.spec["method"] == "npo" and job.metadata_ == {"team": "privacy"}
    assert job.seed == 2**32 - 1
    assert job.created_at.tzinfo is not None and job.enqueued_at == job.created_at
    assert statuses_of(db_session, job.id) == ["queued"]
    reread = jobs.get_job_row(db_session, job.id)
    assert reread.output_model is None and reread.report_available is False


def test_claim_is_exclusive_and_counts_attempts(db_session):
    job = make_job(db_session)
    claimed = jobs.claim_job(db_session, job.id, "worker-a")
    assert claimed is not None
    assert (claimed.status, claimed.attempts, claimed.worker_id) == ("running", 1, "worker-a")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert jobs.claim_job(db_session, job.id, "worker-b") is None  # redelivered message
    assert jobs.claim_job(db_session, "job_00000000000000000000000000", "worker-b") is None
    assert jobs.get_job(db_session, job.id).worker_id == "worker-a"
    assert statuses_of(db_session, job.id) == ["queued", "running"]


def test_concurrent_claims_from_many_sessions_have_one_winner(session_factory):
    with session_factory() as session:
        job_id = make_job(session).id
    contenders = 6
    barrier = threading.Barrier(contenders)
    results: list[bool] = []
    errors: list[BaseException] = []

    def claim(worker: int) -> None:
        try:
            with session_factory() as session:
                barrier.wait()
                results.append(jobs.claim_job(session, job_id, f"worker-{worker}") is not None)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(results) == [False] * (contenders - 1) + [True]
    with session_factory() as session:
        assert jobs.get_job(session, job_id).attempts == 1


def test_heartbeat_records_progress_and_reports_cancellation(db_session):
    job = make_job(db_session)
    jobs.claim_job(db_session, job.id, "w")
    finish_at = utcnow() + timedelta(minutes=5)
    status = jobs.heartbeat(
        db_session,
        job.id,
        step=3,
        total_steps=10,
        epoch=0.5,
        trained_tokens=2**40,
        estimated_finish=finish_at,
    )
    assert status == "running"
    job = jobs.get_job(db_session, job.id)
    db_session.refresh(job)
    assert (job.step, job.total_steps, job.epoch, job.trained_tokens) == (3, 10, 0.5, 2**40)
    assert job.estimated_finish == finish_at

    jobs.request_cancel(db_session, job.id)
    db_session.commit()
    assert jobs.heartbeat(db_session, job.id, step=4) == "cancelling"

    assert jobs.finish_job(db_session, job.id, "cancelled")
    assert jobs.heartbeat(db_session, job.id, step=99) == "cancelled"
    db_session.refresh(job)
    assert job.step == 4  # a finished job's progress is frozen
    with pytest.raises(NotFound):
        jobs.heartbeat(db_session, "job_00000000000000000000000000", step=1)


def test_finish_job_is_conditional_on_an_active_job(db_session):
    job = make_job(db_session)
    assert not jobs.finish_job(db_session, job.id, "succeeded")  # still queued
    jobs.claim_job(db_session, job.id, "w")
    error = {"code": "non_finite_loss", "message": "loss became NaN at step 7", "param": None}
    assert jobs.finish_job(db_session, job.id, "failed", error=error)
    assert not jobs.finish_job(db_session, job.id, "succeeded")  # already finished
    job = jobs.get_job(db_session, job.id)
    db_session.refresh(job)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == error
    assert statuses_of(db_session, job.id) == ["queued", "running", "failed"]
    with pytest.raises(ValueError):
        jobs.finish_job(db_session, job.id, "running")


def test_request_cancel_transitions(db_session):
    queued = make_job(db_session)
    cancelled = jobs.request_cancel(db_session, queued.id)
    db_session.commit()
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert jobs.claim_job(db_session, queued.id, "w") is None  # the message is now a no-op

    running = make_job(db_session)
    jobs.claim_job(db_session, running.id, "w")
    cancelling = jobs.request_cancel(db_session, running.id)
    db_session.commit()
    assert cancelling.status == "cancelling" and cancelling.cancel_requested_at is not None
    assert jobs.request_cancel(db_session, running.id).status == "cancelling"  # idempotent

    with pytest.raises(Conflict) as caught:
        jobs.request_cancel(db_session, queued.id)
    assert caught.value.code == "job_not_cancellable"
    with pytest.raises(NotFound):
        jobs.request_cancel(db_session, "job_00000000000000000000000000")


def test_reaper_requeues_fails_and_cancels_silent_jobs(db_session):
    now = utcnow()
    long_ago = now - timedelta(minutes=10)

    def running_job(attempts: int, heartbeat_at, status="running") -> str:
        job = make_job(db_session)
        jobs.claim_job(db_session, job.id, "w")
        db_session.execute(
            Job.__table__.update()
            .where(Job.id == job.id)
            .values(attempts=attempts, heartbeat_at=heartbeat_at, status=status)
        )
        db_session.commit()
        return job.id

    retry = running_job(1, long_ago)
    give_up = running_job(3, long_ago)
    was_cancelling = running_job(1, long_ago, status="cancelling")
    alive = running_job(1, now - timedelta(seconds=5))
    lost_message = make_job(db_session).id
    never_sent = make_job(db_session).id
    fresh = make_job(db_session).id
    db_session.execute(
        Job.__table__.update().where(Job.id == lost_message).values(enqueued_at=long_ago)
    )
    jobs.mark_enqueue_failed(db_session, never_sent)

    to_enqueue = jobs.reap_stale_jobs(
        db_session, now=now, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
    )
    db_session.commit()

    assert sorted(to_enqueue) == sorted([retry, lost_message, never_sent])
    by_id = {job.id: job for job in db_session.scalars(select(Job))}
    for job in by_id.values():
        db_session.refresh(job)
    assert by_id[retry].status == "queued" and by_id[retry].enqueued_at == now
    assert by_id[retry].worker_id is None
    assert by_id[give_up].status == "failed" and by_id[give_up].error_code == "worker_lost"
    assert by_id[was_cancelling].status == "cancelled"
    assert by_id[alive].status == "running"
    assert by_id[fresh].enqueued_at != now and by_id[lost_message].enqueued_at == now
    assert statuses_of(db_session, retry)[-1] == "queued"
    assert statuses_of(db_session, give_up)[-1] == "failed"
    assert statuses_of(db_session, was_cancelling)[-1] == "cancelled"
    requeue_events = db_session.scalars(
        select(JobEvent.type).where(JobEvent.job_id == lost_message)
    ).all()
    assert "requeue" in requeue_events

    # The requeued job can be claimed again: attempt 2.
    assert jobs.claim_job(db_session, retry, "w2").attempts == 2
    # A second pass right away finds nothing new.
    assert (
        jobs.reap_stale_jobs(
            db_session, now=now, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
        )
        == []
    )


def test_events_and_metrics_are_batched_and_paged(db_session):
    job = make_job(db_session)
    jobs.add_events(
        db_session,
        job.id,
        [{"type": "phase", "message": f"phase {i}", "data": {"i": i}} for i in range(5)],
    )
    jobs.add_metrics(
        db_session,
        job.id,
        [
            {"step": step, "epoch": step / 10, "values": {"loss": 1.0 / step, "lr": 1e-5}}
            for step in range(1, 6)
        ]
        + [{"step": 6, "epoch": 0.6, "values": {"loss": float("nan"), "grad_norm": float("inf")}}],
    )
    db_session.commit()

    first = jobs.list_events(db_session, job.id, limit=3)
    assert first.has_more and [e.type for e in first.items] == ["status", "phase", "phase"]
    rest = jobs.list_events(db_session, job.id, after=first.items[-1].id, limit=10)
    assert not rest.has_more and [e.message for e in rest.items] == [
        "phase 2",
        "phase 3",
        "phase 4",
    ]

    metrics = jobs.list_metrics(db_session, job.id, after_step=3, limit=10)
    assert [m.step for m in metrics.items] == [4, 5, 6]
    assert metrics.items[-1].values == {"loss": None, "grad_norm": None}  # NaN stored as null
    with pytest.raises(ValueError):
        jobs.add_events(db_session, job.id, [{"level": "fatal", "type": "x", "message": ""}])


def test_list_jobs_filters_and_pages_newest_first(db_session):
    made = [make_job(db_session, metadata={"team": "a" if i % 2 else "b"}) for i in range(5)]
    jobs.claim_job(db_session, made[0].id, "w")
    newest_first = [job.id for job in reversed(made)]

    page = jobs.list_jobs(db_session, limit=2)
    assert [row.id for row in page.items] == newest_first[:2] and page.has_more
    page = jobs.list_jobs(db_session, limit=2, after=page.items[-1].id)
    assert [row.id for row in page.items] == newest_first[2:4]

    assert [r.id for r in jobs.list_jobs(db_session, statuses=["running"]).items] == [made[0].id]
    team_a = jobs.list_jobs(db_session, metadata={"team": "a"}).items
    assert {r.id for r in team_a} == {made[1].id, made[3].id}
    assert jobs.list_jobs(db_session, method="ga").items == []
    after_claim = jobs.list_jobs(db_session, updated_after=made[4].updated_at).items
    assert [r.id for r in after_claim] == [made[0].id]
    assert jobs.count_jobs_by_status(db_session)["queued"] == 4


# ------------------------------------------------------- fencing, clocks and retries


def reap_and_claim_again(session, job_id: str, worker_id: str = "w2") -> int:
    """What happens when a worker's heartbeats stall: the reaper requeues the job and
    another worker claims it. One transaction, so the stalled worker cannot slip a
    heartbeat in between; returns the new attempt."""
    session.execute(
        Job.__table__.update()
        .where(Job.id == job_id)
        .values(heartbeat_at=utcnow() - timedelta(hours=1))
    )
    assert jobs.reap_stale_jobs(
        session, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
    ) == [job_id]
    return jobs.claim_job(session, job_id, worker_id).attempts  # commits both


def test_a_reaped_attempt_cannot_heartbeat_publish_or_finish_the_next_one(db_session):
    job = make_job(db_session)
    first = jobs.claim_job(db_session, job.id, "w1").attempts
    assert jobs.heartbeat(db_session, job.id, attempt=first, step=5) == "running"
    second = reap_and_claim_again(db_session, job.id)
    assert (first, second) == (1, 2)

    assert jobs.heartbeat(db_session, job.id, attempt=first, step=50) is None  # stop
    assert not jobs.hold_job(db_session, job.id, first)
    db_session.rollback()
    assert jobs.finish_job(db_session, job.id, "succeeded", attempt=first) is None
    job = jobs.get_job(db_session, job.id)
    db_session.refresh(job)
    assert (job.status, job.attempts, job.worker_id, job.step) == ("running", 2, "w2", 0)

    assert jobs.heartbeat(db_session, job.id, attempt=second, step=1) == "running"
    assert jobs.hold_job(db_session, job.id, second)
    db_session.commit()
    assert jobs.finish_job(db_session, job.id, "succeeded", attempt=second) == "succeeded"


def test_heartbeats_and_the_reaper_run_on_the_database_clock(db_session):
    """A worker whose clock runs an hour behind is not reaped while it heartbeats."""
    job = make_job(db_session)
    jobs.claim_job(db_session, job.id, "w")
    skewed = utcnow() - timedelta(hours=1)
    jobs.heartbeat(db_session, job.id, attempt=1, step=1, now=skewed)
    assert (
        jobs.reap_stale_jobs(
            db_session, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
        )
        == []
    )
    db_session.commit()
    job = jobs.get_job(db_session, job.id)
    db_session.refresh(job)
    assert job.status == "running"
    for written in (job.heartbeat_at, job.started_at):  # aware UTC, read back from text
        assert written.tzinfo is not None and abs(written - utcnow()) < timedelta(minutes=1)
    assert job.heartbeat_at >= job.started_at

    # Silent for longer than stale_after_s by the database's clock: reaped.
    db_session.execute(
        Job.__table__.update()
        .where(Job.id == job.id)
        .values(heartbeat_at=utcnow() - timedelta(seconds=121))
    )
    assert jobs.reap_stale_jobs(
        db_session, stale_after_s=120, requeue_queued_after_s=300, max_attempts=3
    ) == [job.id]


def test_an_attempt_killed_at_the_time_limit_is_not_retried(db_session):
    now = utcnow()

    def silent_job(started_ago: timedelta) -> str:
        job = make_job(db_session)
        jobs.claim_job(db_session, job.id, "w")
        db_session.execute(
            Job.__table__.update()
            .where(Job.id == job.id)
            .values(started_at=now - started_ago, heartbeat_at=now - timedelta(minutes=10))
        )
        db_session.commit()
        return job.id

    killed = silent_job(timedelta(hours=24, minutes=3))
    crashed = silent_job(timedelta(hours=1))
    to_enqueue = jobs.reap_stale_jobs(
        db_session,
        now=now,
        stale_after_s=120,
        requeue_queued_after_s=300,
        max_attempts=3,
        time_limit_s=24 * 3600,
    )
    db_session.commit()
    assert to_enqueue == [crashed]
    killed_job = jobs.get_job(db_session, killed)
    db_session.refresh(killed_job)
    assert (killed_job.status, killed_job.error_code) == ("failed", "time_limit")
    assert "time limit" in killed_job.error_message
    assert statuses_of(db_session, killed)[-1] == "failed"


def test_a_queued_job_is_published_again_at_most_once_per_interval(db_session):
    """A job waiting behind a backlog is not re-published at every reaper pass."""
    job = make_job(db_session)
    db_session.execute(
        Job.__table__.update()
        .where(Job.id == job.id)
        .values(enqueued_at=utcnow() - timedelta(minutes=11))
    )
    db_session.commit()

    def reaper_pass(**clock) -> list[str]:
        published = jobs.reap_stale_jobs(
            db_session, stale_after_s=120, requeue_queued_after_s=600, max_attempts=3, **clock
        )
        db_session.commit()
        return published

    assert reaper_pass() == [job.id]
    assert [reaper_pass() for _ in range(3)] == [[], [], []]
    in_nine_minutes = utcnow() + timedelta(minutes=9)
    assert reaper_pass(now=in_nine_minutes) == []
    assert reaper_pass(now=in_nine_minutes + timedelta(minutes=2)) == [job.id]
    requeues = db_session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.type == "requeue")
    ).all()
    assert len(requeues) == 2


def test_a_retry_starts_a_clean_run_but_keeps_the_history(db_session):
    job = make_job(db_session)
    jobs.claim_job(db_session, job.id, "w1")
    jobs.heartbeat(db_session, job.id, attempt=1, step=2, total_steps=9, epoch=0.2)
    jobs.add_metrics(db_session, job.id, [{"step": s, "values": {"loss": 1.0}} for s in (1, 2)])
    jobs.add_events(db_session, job.id, [{"type": "phase", "message": "unlearning"}])
    db_session.commit()

    assert reap_and_claim_again(db_session, job.id) == 2
    job = jobs.get_job(db_session, job.id)
    db_session.refresh(job)
    assert (job.step, job.total_steps, job.epoch) == (0, None, 0.0)
    # The runner rewinds to the step it resumes from (0: no saved state): later metrics go.
    assert jobs.rewind_progress(db_session, job.id, attempt=2, step=1)
    assert [m.step for m in jobs.list_metrics(db_session, job.id).items] == [1]
    assert not jobs.rewind_progress(db_session, job.id, attempt=1, step=0)  # not its job
    assert jobs.rewind_progress(db_session, job.id, attempt=2, step=0)
    assert jobs.list_metrics(db_session, job.id).items == []
    events = jobs.list_events(db_session, job.id).items
    assert "unlearning" in [event.message for event in events]  # history stays


def add_final_checkpoint(session, job_id: str) -> None:
    from core.db.artifacts import add_checkpoint

    add_checkpoint(session, job_id, "final", 3, f"jobs/{job_id}/attempt-1/c", [], "0" * 64)
    session.commit()


def test_a_retry_after_the_result_was_published_keeps_its_metrics(db_session):
    from core.db.model_registry import register_model

    job = make_job(db_session)
    jobs.claim_job(db_session, job.id, "w1")
    jobs.add_metrics(db_session, job.id, [{"step": 1, "values": {"loss": 1.0}}])
    add_final_checkpoint(db_session, job.id)
    output = register_model(db_session, job.id, "file:///x", "job_output", job_id=job.id)
    db_session.commit()

    assert reap_and_claim_again(db_session, job.id) == 2
    assert [m.step for m in jobs.list_metrics(db_session, job.id).items] == [1]
    assert jobs.published_output(db_session, job.id) == output.id


def test_finish_ends_a_cancelling_job_cancelled_unless_its_result_was_published(db_session):
    def cancelling_job() -> str:
        job = make_job(db_session)
        jobs.claim_job(db_session, job.id, "w")
        jobs.request_cancel(db_session, job.id)
        db_session.commit()
        return job.id

    too_late = cancelling_job()
    add_final_checkpoint(db_session, too_late)
    assert jobs.finish_job(db_session, too_late, "succeeded", attempt=1) == "succeeded"
    messages = [event.message for event in jobs.list_events(db_session, too_late).items]
    assert "the cancel arrived after the checkpoint was published; the job completed" in messages

    in_time = cancelling_job()
    assert jobs.finish_job(db_session, in_time, "succeeded", attempt=1) == "cancelled"
    assert statuses_of(db_session, in_time)[-1] == "cancelled"
    assert jobs.get_job_status(db_session, in_time) == "cancelled"


def test_nul_characters_are_stripped_from_events_and_errors(db_session):
    """Postgres rejects U+0000 in text and JSONB; an exception message may carry one."""
    job = make_job(db_session)
    jobs.claim_job(db_session, job.id, "w")
    jobs.add_events(
        db_session,
        job.id,
        [{"type": "error", "message": "bad\x00byte", "data": {"line": "a\x00b"}}],
    )
    error = {"code": "internal_error", "message": "UnicodeError: \x00", "param": "f\x00"}
    assert jobs.finish_job(db_session, job.id, "failed", error=error) == "failed"
    job = jobs.get_job(db_session, job.id)
    db_session.refresh(job)
    assert (job.error_message, job.error_param) == ("UnicodeError: ", "f")
    stored = [e for e in jobs.list_events(db_session, job.id).items if e.type == "error"]
    assert (stored[0].message, stored[0].data) == ("badbyte", {"line": "ab"})
