"""Job state: the queries both the API and the worker run.

Every state change is a conditional UPDATE (``WHERE status = ...``), so two processes
racing on one job (a redelivered message, a reaper and a late heartbeat, a cancel and a
finish) cannot both win. The worker's writes are also fenced by the attempt number its
claim returned (``WHERE attempts = ...``): a worker that was reaped while still alive
(its heartbeats stalled) cannot heartbeat, publish into or finish the next attempt.

Liveness runs on the database's clock (heartbeats, claims and the reaper's cutoffs), so
workers and API hosts whose clocks disagree cannot make a live job look stale.

Functions take a Session; the caller commits unless the docstring says the function
does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Row,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.sql.expression import FunctionElement

from core.db.audit import REAPER, WORKER, add_audit_entry
from core.db.ids import is_id, new_id
from core.db.json_safe import finite_or_none
from core.db.pagination import Page, paginate
from core.db.tables import (
    ACTIVE_STATUSES,
    EVENT_LEVELS,
    JOB_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    Job,
    JobDeletionRequest,
    JobEvent,
    JobMetric,
    Model,
    Report,
)
from core.db.types import UTCDateTime, utcnow
from core.db.webhooks import job_ended
from core.errors import Conflict, NotFound
from core.tenancy import owner_tenant, scoped, visible

if TYPE_CHECKING:
    from core.spec import JobSpec


_jobs = Job.__table__

#: What a job's API object shows, in one indexed query: every ``jobs`` column (by column
#: name, so ``metadata``), plus ``output_model`` (the output model's name) and
#: ``report_available``. Core rather than ORM: status reads are the service's hottest
#: path, and loading ORM instances costs more than the query itself.
JOB_VIEW_COLUMNS = (
    *_jobs.c,
    Model.name.label("output_model"),
    Report.job_id.is_not(None).label("report_available"),
)
_JOB_VIEW_FROM = _jobs.outerjoin(Model, Model.id == _jobs.c.output_model_id).outerjoin(
    Report, Report.job_id == _jobs.c.id
)
# Built once: constructing a statement per request is a measurable share of a read.
_JOB_VIEW_BY_ID = (
    select(*JOB_VIEW_COLUMNS).select_from(_JOB_VIEW_FROM).where(_jobs.c.id == bindparam("job_id"))
)

#: A row of JOB_VIEW_COLUMNS (attribute access by column name).
JobRow = Row

_INSERT_JOB = _jobs.insert()
_INSERT_LINK = JobDeletionRequest.__table__.insert()
_INSERT_EVENT = JobEvent.__table__.insert()
_INSERT_METRIC = JobMetric.__table__.insert()
# Column name -> ORM attribute, where they differ ("metadata" -> "metadata_").
_ATTRIBUTE_BY_COLUMN = {
    attr.columns[0].name: attr.key
    for attr in sa_inspect(Job).column_attrs
    if attr.columns[0].name != attr.key
}
_COLUMN_NAMES = tuple(column.name for column in _jobs.c)


class database_now(FunctionElement):  # noqa: N801 - reads as the SQL function it renders
    """The database server's clock, as UTC: one clock for every heartbeat and every
    staleness cutoff, whichever host writes or reads them."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(database_now)
def _database_now_postgres(element, compiler, **kw) -> str:
    return "now()"


@compiles(database_now, "sqlite")
def _database_now_sqlite(element, compiler, **kw) -> str:
    # The text layout UTCDateTime stores on SQLite (naive UTC, fractional seconds), so
    # values written here and by Python compare correctly as strings.
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


#: Progress columns of a run that has not started (a retry starts from here again).
_NO_PROGRESS = {
    "step": 0,
    "total_steps": None,
    "epoch": 0.0,
    "trained_tokens": 0,
    "estimated_finish": None,
}


# ---------------------------------------------------------------------------- create


def create_job(
    session: Session,
    spec: JobSpec,
    forget_dataset_id: str,
    retain_dataset_id: str | None = None,
    *,
    hyperparameters: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Job:
    """Insert a ``queued`` job and its first status event (not committed).

    ``hyperparameters`` are the method's resolved values; computed from the spec when
    not given. ``enqueued_at`` is set now: the caller publishes the message right after
    committing, and the reaper re-publishes if that never happened. The returned Job is
    attached to the session as if loaded, without a query.
    """
    row = insert_job(
        session,
        spec,
        forget_dataset_id,
        retain_dataset_id,
        hyperparameters=hyperparameters,
        now=now,
    )
    job = Job(**{_ATTRIBUTE_BY_COLUMN.get(name, name): row.get(name) for name in _COLUMN_NAMES})
    make_transient_to_detached(job)
    session.add(job)
    return job


def insert_job(
    session: Session,
    spec: JobSpec,
    forget_dataset_id: str,
    retain_dataset_id: str | None = None,
    *,
    hyperparameters: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``create_job`` without building an ORM object: returns the inserted column values
    (by column name). Core inserts rather than an ORM flush, because submission is the
    API's hot write path and the unit of work costs more CPU than both statements."""
    now = now or utcnow()
    if hyperparameters is None:
        hyperparameters = spec.method_hyperparameters().model_dump(mode="json")
    row = {
        "id": new_id("job"),
        "status": "queued",
        "kind": spec.kind,
        "method": spec.method if spec.kind == "unlearn" else "finetune",
        "model": spec.model,
        "forget_dataset_id": forget_dataset_id,
        "retain_dataset_id": retain_dataset_id,
        "spec": spec.model_dump(mode="json"),
        "hyperparameters": hyperparameters,
        "seed": spec.seed,
        "metadata": dict(spec.metadata),
        "deletion_request_id": spec.deletion_request,
        "tenant_id": owner_tenant(),
        "created_at": now,
        "updated_at": now,
        "enqueued_at": now,
        "attempts": 0,
        **_NO_PROGRESS,
    }
    session.connection().execute(_INSERT_JOB, row)
    if spec.deletion_request is not None:
        # Requests read their jobs through the link table (core.db.deletion_requests).
        session.connection().execute(
            _INSERT_LINK,
            {
                "job_id": row["id"],
                "deletion_request_id": spec.deletion_request,
                "tenant_id": row["tenant_id"],
            },
        )
    _status_event(session, row["id"], "queued", "job created and queued", now=now)
    return row


# ----------------------------------------------------------------------------- reads


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id) if is_id(job_id, "job") else None
    if job is None or not visible(job.tenant_id):
        raise _job_not_found(job_id)
    return job


def get_job_status(session: Session, job_id: str) -> str:
    status = None
    if is_id(job_id):
        status = session.scalar(scoped(select(Job.status).where(Job.id == job_id), Job.tenant_id))
    if status is None:
        raise _job_not_found(job_id)
    return status


def get_job_row(session: Session, job_id: str) -> JobRow:
    """The job as its API object shows it: one primary-key lookup."""
    row = None
    if is_id(job_id):
        row = session.connection().execute(_JOB_VIEW_BY_ID, {"job_id": job_id}).first()
    if row is None or not visible(row.tenant_id):
        raise _job_not_found(job_id)
    return row


def list_jobs(
    session: Session,
    *,
    statuses: Sequence[str] = (),
    method: str | None = None,
    metadata: dict[str, str] | None = None,
    updated_after: datetime | None = None,
    after: str | None = None,
    limit: int = 20,
) -> Page[JobRow]:
    """Newest first; ``after`` is the last id of the previous page."""
    statement = scoped(select(*JOB_VIEW_COLUMNS).select_from(_JOB_VIEW_FROM), _jobs.c.tenant_id)
    if statuses:
        statement = statement.where(_jobs.c.status.in_(list(statuses)))
    if method:
        statement = statement.where(_jobs.c.method == method)
    for key, value in (metadata or {}).items():
        statement = statement.where(_jobs.c.metadata[key].as_string() == value)
    if updated_after is not None:
        statement = statement.where(_jobs.c.updated_at > updated_after)
    if after is not None:
        statement = statement.where(_jobs.c.id < after)
    statement = statement.order_by(_jobs.c.id.desc()).limit(limit + 1)
    rows = session.connection().execute(statement).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def count_jobs_by_status(session: Session) -> dict[str, int]:
    statement = scoped(select(Job.status, func.count()), Job.tenant_id).group_by(Job.status)
    counts = dict(session.execute(statement).all())
    return {status: counts.get(status, 0) for status in JOB_STATUSES}


def list_events(
    session: Session, job_id: str, *, after: int | None = None, limit: int = 100
) -> Page[JobEvent]:
    """Oldest first, so a client polls with ``after`` = the last id it saw."""
    statement = select(JobEvent).where(JobEvent.job_id == job_id)
    return paginate(session, statement, JobEvent.id, after=after, limit=limit, newest_first=False)


def list_metrics(
    session: Session, job_id: str, *, after_step: int | None = None, limit: int = 100
) -> Page[JobMetric]:
    """In step order; ``after_step`` is the last step the client has."""
    statement = select(JobMetric).where(JobMetric.job_id == job_id)
    if after_step is not None:
        statement = statement.where(JobMetric.step > after_step)
    statement = statement.order_by(JobMetric.step, JobMetric.id).limit(limit + 1)
    rows = list(session.scalars(statement))
    return Page(items=rows[:limit], has_more=len(rows) > limit)


# ------------------------------------------------------------------- worker side


def claim_job(
    session: Session, job_id: str, worker_id: str, *, now: datetime | None = None
) -> Job | None:
    """Move ``queued -> running`` in one conditional UPDATE. Commits.

    Returns None when the job was not queued (already claimed, cancelled, finished, or
    unknown): a message delivered twice never runs a job twice. The returned job's
    ``attempts`` is this claim's fencing token: pass it as ``attempt`` to every later
    write of the run.

    A retry (attempt 2 and on) or a resume continues from the last saved training
    state, if any: the worker then calls :func:`rewind_progress` to drop the metrics and
    evaluation points after the step it resumes at.
    """
    now = now or utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            attempts=Job.attempts + 1,
            started_at=database_now(),
            heartbeat_at=database_now(),
            updated_at=now,
            worker_id=worker_id,
        )
        .returning(Job.attempts)
    ).first()
    if claimed is None:
        session.rollback()
        return None
    attempt = claimed.attempts
    if attempt > 1 and not session.scalar(select(_is_published(job_id))):
        # Until the runner rewinds to the point it resumes from, the job shows no progress.
        session.execute(update(Job).where(Job.id == job_id).values(**_NO_PROGRESS))
    _status_event(
        session,
        job_id,
        "running",
        f"started on {worker_id} (attempt {attempt})",
        now=now,
        data={"worker_id": worker_id, "attempt": attempt},
    )
    session.commit()
    return _fresh(session, job_id)


def heartbeat(
    session: Session,
    job_id: str,
    *,
    attempt: int | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    epoch: float | None = None,
    trained_tokens: int | None = None,
    estimated_finish: datetime | None = None,
    now: datetime | None = None,
) -> str | None:
    """Record progress and liveness; returns the job's status, so the worker sees
    ``cancelling`` (stop and clean up) or anything but ``running`` (stop: the job was
    reaped or finished elsewhere). None when ``attempt`` no longer holds the job (it was
    reaped and claimed again): stop, and write nothing more. Progress is only written
    while the job is active and held, and only what is given (a worker that has not
    trained a step yet, or whose ranks report for it, leaves the step as it is). ``heartbeat_at`` is the database's clock; ``now``
    only sets ``updated_at``. Commits."""
    now = now or utcnow()
    values: dict[str, Any] = {"heartbeat_at": database_now(), "updated_at": now}
    optional = {
        "step": step,
        "total_steps": total_steps,
        "epoch": epoch,
        "trained_tokens": trained_tokens,
        "estimated_finish": estimated_finish,
    }
    values.update({key: value for key, value in optional.items() if value is not None})
    row = session.execute(
        update(Job).where(*_held(job_id, attempt)).values(**values).returning(Job.status)
    ).first()
    if row is not None:
        status = row.status
    else:
        current = session.execute(select(Job.status, Job.attempts).where(Job.id == job_id)).first()
        if current is None:
            session.rollback()
            raise _job_not_found(job_id)
        superseded = attempt is not None and current.attempts != attempt
        status = None if superseded else current.status
    session.commit()
    return status


def hold_job(
    session: Session,
    job_id: str,
    attempt: int | None,
    *,
    statuses: Sequence[str] = ACTIVE_STATUSES,
) -> bool:
    """Whether ``attempt`` still holds the job (in one of ``statuses``); call it first in
    a transaction that writes the run's rows (metrics, the checkpoint), and roll back
    when False. Not committed.

    It is a write (it records a heartbeat), so it takes the job row's lock on Postgres
    and the database write lock on SQLite until the caller commits: a reaper or a new
    claim racing with the transaction waits for it and then sees its rows, instead of
    the rows landing in the next attempt's run.
    """
    result = session.execute(
        update(Job).where(*_held(job_id, attempt, statuses)).values(heartbeat_at=database_now())
    )
    return result.rowcount == 1


def rewind_progress(
    session: Session, job_id: str, *, attempt: int, step: int, epoch: float = 0.0, tokens: int = 0
) -> bool:
    """A run (re)starting at ``step`` (0: from scratch) drops the metrics and evaluation
    points of later steps, which it will measure again, and sets its progress there.
    Events stay: they are the job's history. False when ``attempt`` no longer holds the
    job. Commits."""
    from core.db.evaluations import drop_evaluations_after

    if not hold_job(session, job_id, attempt):
        session.rollback()
        return False
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > step))
    drop_evaluations_after(session, job_id, step)
    progress = {**_NO_PROGRESS, "step": step, "epoch": epoch, "trained_tokens": tokens}
    session.execute(update(Job).where(Job.id == job_id).values(**progress))
    session.commit()
    return True


def add_events(session: Session, job_id: str, events: Iterable[dict[str, Any]]) -> None:
    """Insert events in one statement. Each: ``level`` (info|warning|error, default
    info), ``type``, ``message``, optional ``data`` and ``created_at``. NUL characters
    are removed (Postgres text and JSONB cannot hold them)."""
    now = utcnow()
    rows = []
    for event in events:
        level = event.get("level", "info")
        if level not in EVENT_LEVELS:
            raise ValueError(f"event level must be one of {EVENT_LEVELS}, got {level!r}")
        rows.append(
            {
                "job_id": job_id,
                "created_at": event.get("created_at") or now,
                "level": level,
                "type": _without_nul(event["type"]),
                "message": _without_nul(event.get("message", "")),
                "data": _without_nul(finite_or_none(event.get("data"))),
            }
        )
    if rows:
        session.connection().execute(_INSERT_EVENT, rows)


def add_metrics(session: Session, job_id: str, rows: Iterable[dict[str, Any]]) -> None:
    """Insert metric rows (``step``, ``epoch``, ``values``) in one statement. NaN and
    infinities in ``values`` are stored as null (a diverged loss is still recorded)."""
    now = utcnow()
    batch = [
        {
            "job_id": job_id,
            "step": row["step"],
            "epoch": finite_or_none(row.get("epoch")),
            "created_at": row.get("created_at") or now,
            "values": finite_or_none(row.get("values") or {}),
        }
        for row in rows
    ]
    if batch:
        session.connection().execute(_INSERT_METRIC, batch)


def published_output(session: Session, job_id: str) -> str | None:
    """The output model of a job whose result an earlier attempt already published (its
    worker died between publishing and finishing), else None."""
    return session.scalar(
        select(Model.id).where(
            Model.job_id == job_id,
            Model.kind == "job_output",
            _is_published(job_id),
        )
    )


def finish_job(
    session: Session,
    job_id: str,
    status: str,
    error: dict[str, Any] | None = None,
    output_model_id: str | None = None,
    *,
    attempt: int | None = None,
    verdict: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> str | None:
    """End an active (running, pausing or cancelling) job as succeeded, failed or
    cancelled, with the published point's ``verdict`` when it has one;
    returns the status it ended in. None when it was not active any more (reaped,
    already finished) or ``attempt`` no longer holds it. Commits.

    A ``cancelling`` job asked to end ``succeeded`` ends ``cancelled``, unless its
    checkpoint was already published: then the result exists (the cancel came too late
    to stop it), the job ends ``succeeded`` and an event says so. NUL characters are
    removed from the error.
    """
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"finish status must be one of {TERMINAL_STATUSES}, got {status!r}")
    now = now or utcnow()
    error = {key: _without_nul(value) for key, value in (error or {}).items()}
    final_status: Any = status
    if status == "succeeded":
        final_status = case(
            ((Job.status == "cancelling") & ~_is_published(Job.id), "cancelled"), else_="succeeded"
        )
    row = session.execute(
        update(Job)
        .where(*_held(job_id, attempt))
        .values(
            status=final_status,
            finished_at=now,
            updated_at=now,
            estimated_finish=None,
            error_code=error.get("code"),
            error_message=error.get("message"),
            error_param=error.get("param"),
            output_model_id=output_model_id,
            verdict=finite_or_none(_without_nul(verdict)) if verdict is not None else None,
        )
        .returning(Job.status, Job.cancel_requested_at)
    ).first()
    if row is None:
        session.rollback()
        return None
    ended = row.status
    # cancel_requested_at is only ever set by a cancel of an active job.
    cancel_was_requested = row.cancel_requested_at is not None
    message = {
        "succeeded": "job succeeded",
        "cancelled": "job cancelled",
        "failed": f"job failed: {error.get('message') or error.get('code') or 'unknown error'}",
    }[ended]
    if ended != status:
        message = "job cancelled: the cancel arrived before the checkpoint was published"
    _status_event(
        session,
        job_id,
        ended,
        message,
        now=now,
        level="error" if ended == "failed" else "info",
        data={"error": error} if error else None,
    )
    if ended == "succeeded" and cancel_was_requested:
        add_events(
            session,
            job_id,
            [
                {
                    "level": "warning",
                    "type": "cancel",
                    "message": "the cancel arrived after the checkpoint was published; "
                    "the job completed",
                    "created_at": now,
                }
            ],
        )
    add_audit_entry(
        session,
        principal=WORKER,
        action="job.finished",
        object_type="job",
        object_id=job_id,
        data={
            "status": ended,
            "error_code": error.get("code"),
            **({"verdict": verdict.get("status")} if verdict else {}),
            **({"target_met": verdict.get("target_met")} if verdict else {}),
        },
    )
    job_ended(session, job_id, now=now)
    session.commit()
    return ended


# ----------------------------------------------------------------------- cancel


def request_cancel(
    session: Session, job_id: str, *, principal: str | None = None, now: datetime | None = None
) -> Job:
    """``queued`` and ``paused`` become ``cancelled`` at once (a queued job's claim will
    then fail); ``running`` and ``pausing`` become ``cancelling`` (the worker sees it at
    its next heartbeat and ends the job ``cancelled``); ``cancelling`` stays. Terminal
    jobs raise Conflict ``job_not_cancellable``. The caller commits.

    With ``principal``, the transition's ``job.cancel_requested`` audit entry is added in
    the same transaction: one per cancellation, however many requests race for it (a
    cancel that finds the job already ``cancelling`` changed nothing, and records
    nothing)."""
    now = now or utcnow()
    # A worker may move the job between our read and our write: retry on the new status.
    for _ in range(5):
        status = get_job_status(session, job_id)
        if status == "cancelling":
            return _fresh(session, job_id)
        if status in TERMINAL_STATUSES:
            raise Conflict(
                f"job {job_id} is already {status} and cannot be cancelled",
                param="job_id",
                code="job_not_cancellable",
            )
        target = {
            "queued": "cancelled",
            "paused": "cancelled",
            "running": "cancelling",
            "pausing": "cancelling",
        }[status]
        values: dict[str, Any] = {"status": target, "updated_at": now, "cancel_requested_at": now}
        if target == "cancelled":
            values["finished_at"] = now
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.status == status).values(**values)
        )
        if result.rowcount == 1:
            message = (
                "cancelled before it started"
                if target == "cancelled"
                else "cancellation requested; the worker stops at its next step"
            )
            _status_event(session, job_id, target, message, now=now)
            if principal is not None:
                add_audit_entry(
                    session,
                    principal=principal,
                    action="job.cancel_requested",
                    object_type="job",
                    object_id=job_id,
                    data={"status": target},
                )
            if target == "cancelled":
                job_ended(session, job_id, now=now)
            return _fresh(session, job_id)
    raise Conflict(f"job {job_id} kept changing state; retry", param="job_id")


# ------------------------------------------------------------------ pause / resume


def request_pause(session: Session, job_id: str, *, now: datetime | None = None) -> Job:
    """``running -> pausing``: the worker saves the full training state at its next step
    and ends the attempt ``paused``; ``queued -> paused`` at once (nothing to save: it
    will start from the beginning, or from the state an earlier attempt saved).
    ``pausing`` and ``paused`` stay. Other statuses raise Conflict ``job_not_pausable``.
    The caller commits."""
    now = now or utcnow()
    for _ in range(5):
        status = get_job_status(session, job_id)
        if status in ("pausing", "paused"):
            return _fresh(session, job_id)
        if status not in ("queued", "running"):
            raise Conflict(
                f"job {job_id} is {status} and cannot be paused (only queued or running jobs)",
                param="job_id",
                code="job_not_pausable",
            )
        target = "paused" if status == "queued" else "pausing"
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == status)
            .values(status=target, updated_at=now, pause_requested_at=now)
        )
        if result.rowcount == 1:
            message = (
                "paused before it started"
                if target == "paused"
                else "pause requested; the worker saves the training state at its next step"
            )
            _status_event(session, job_id, target, message, now=now)
            return _fresh(session, job_id)
    raise Conflict(f"job {job_id} kept changing state; retry", param="job_id")


def mark_paused(
    session: Session, job_id: str, *, attempt: int, step: int, now: datetime | None = None
) -> bool:
    """The worker saved the training state at ``step`` and stops: ``pausing -> paused``.
    False when the job was no longer pausing on this attempt (a cancel won). Commits."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(*_held(job_id, attempt, ("pausing",)))
        .values(status="paused", updated_at=now, worker_id=None, estimated_finish=None)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    _status_event(session, job_id, "paused", f"paused at step {step}; resume to continue", now=now)
    session.commit()
    return True


def resume_job(session: Session, job_id: str, *, now: datetime | None = None) -> Job:
    """``paused -> queued`` (the caller publishes the message after committing); a
    ``pausing`` job that has not stopped yet goes back to ``running``. The next claim
    continues from the saved state. Other statuses raise Conflict ``job_not_paused``.
    The caller commits."""
    now = now or utcnow()
    for _ in range(5):
        status = get_job_status(session, job_id)
        if status not in ("paused", "pausing"):
            raise Conflict(
                f"job {job_id} is {status}, not paused",
                param="job_id",
                code="job_not_paused",
            )
        values: dict[str, Any] = {"updated_at": now, "pause_requested_at": None}
        if status == "paused":
            values.update(status="queued", enqueued_at=now, resumes=Job.resumes + 1)
        else:
            values.update(status="running")
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.status == status).values(**values)
        )
        if result.rowcount == 1:
            target = values["status"]
            message = (
                "resumed; queued to continue from its saved state"
                if target == "queued"
                else "pause withdrawn before the worker stopped; still running"
            )
            _status_event(session, job_id, target, message, now=now)
            return _fresh(session, job_id)
    raise Conflict(f"job {job_id} kept changing state; retry", param="job_id")


# ----------------------------------------------------------------------- reaper


def reap_stale_jobs(
    session: Session,
    *,
    now: datetime | None = None,
    stale_after_s: float,
    requeue_queued_after_s: float,
    max_attempts: int,
    time_limit_s: float | None = None,
    lost_messages: Callable[[list[str]], set[str]] | None = None,
) -> list[str]:
    """Recover jobs whose worker died or whose message was lost.

    - running/pausing/cancelling with a heartbeat older than ``stale_after_s``:
      ``cancelling`` becomes ``cancelled``, ``pausing`` becomes ``paused`` (its last
      evaluation point's state is saved); ``running`` goes back to ``queued`` (to resume
      from its last saved state), or to ``failed`` with error ``worker_lost`` once
      ``attempts >= max_attempts`` (resumes after a pause do not count), or with error
      ``time_limit`` once the attempt started ``time_limit_s`` ago (the hard time limit
      killed it; another attempt would be killed the same way);
    - queued and never enqueued (the broker refused the message), or enqueued more than
      ``requeue_queued_after_s`` ago and among ``lost_messages(candidates)``: a lost
      message. ``lost_messages`` says which of those jobs have no message left in the
      broker (``core.reaper.LostMessages``: a job merely waiting behind others still has
      its message there, so it is not published again); without it every candidate
      counts as lost, at most once per interval (``enqueued_at`` is bumped at each
      publish), for brokers whose contents cannot be read.

    ``now`` defaults to the database's clock, the one heartbeats are written with.
    Returns the ids to publish again, their ``enqueued_at`` bumped. The caller commits
    first, then publishes.
    """
    now = now or session.scalar(select(database_now()))
    stale_cutoff = now - timedelta(seconds=stale_after_s)
    is_stale = or_(Job.heartbeat_at < stale_cutoff, Job.heartbeat_at.is_(None))
    to_enqueue: list[str] = []

    # Lost messages first: the broker is asked before this transaction writes (and locks)
    # anything.
    queued_cutoff = now - timedelta(seconds=requeue_queued_after_s)
    is_lost = or_(Job.enqueued_at < queued_cutoff, Job.enqueued_at.is_(None))
    candidates = session.execute(
        select(Job.id, Job.enqueued_at).where(Job.status == "queued", is_lost)
    ).all()
    never_sent = [job_id for job_id, enqueued_at in candidates if enqueued_at is None]
    sent = [job_id for job_id, enqueued_at in candidates if enqueued_at is not None]
    if lost_messages is not None and sent:
        lost_ids = lost_messages(sent)
        sent = [job_id for job_id in sent if job_id in lost_ids]
    why = {job_id: "the broker refused its message earlier" for job_id in never_sent}
    why.update(
        (job_id, "its message is no longer in the broker")
        if lost_messages is not None
        else (job_id, "still queued with no worker on it")
        for job_id in sent
    )
    for job_id in never_sent + sent:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", is_lost)
            .values(enqueued_at=now)
        )
        if result.rowcount == 1:
            add_events(
                session,
                job_id,
                [
                    {
                        "level": "warning",
                        "type": "requeue",
                        "message": f"{why[job_id]}; message published again",
                        "created_at": now,
                    }
                ],
            )
            to_enqueue.append(job_id)

    stale = session.execute(
        select(Job.id, Job.status, Job.attempts, Job.resumes, Job.started_at).where(
            Job.status.in_(ACTIVE_STATUSES), is_stale
        )
    ).all()
    for job_id, status, claims, resumes, started_at in stale:
        # Claims that resumed a paused run are not failures.
        attempts = claims - resumes
        silent = f"no heartbeat for {stale_after_s:g}s"
        values: dict[str, Any] = {"updated_at": now, "estimated_finish": None}
        level = "warning"
        over_time = (
            time_limit_s is not None
            and started_at is not None
            and now - started_at >= timedelta(seconds=time_limit_s)
        )
        if status == "cancelling":
            values.update(status="cancelled", finished_at=now)
            message = f"worker lost while cancelling ({silent}); job cancelled"
        elif status == "pausing":
            values.update(status="paused", worker_id=None, heartbeat_at=None)
            message = (
                f"worker lost while pausing ({silent}); paused at its last saved evaluation point"
            )
        elif over_time:
            values.update(
                status="failed",
                finished_at=now,
                error_code="time_limit",
                error_message=f"the job ran past the {time_limit_s:g}s time limit on attempt "
                f"{attempts} and was stopped",
            )
            message = f"attempt {attempts} hit the {time_limit_s:g}s time limit; not retried"
            level = "error"
        elif attempts >= max_attempts:
            values.update(
                status="failed",
                finished_at=now,
                error_code="worker_lost",
                error_message=f"the worker stopped responding ({silent}) on attempt "
                f"{attempts} of {max_attempts}",
            )
            message = f"worker lost ({silent}); giving up after {attempts} attempts"
            level = "error"
        else:
            values.update(status="queued", enqueued_at=now, worker_id=None, heartbeat_at=None)
            message = (
                f"worker lost ({silent}); re-queued after attempt {attempts} of {max_attempts}"
            )
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.status == status, is_stale).values(**values)
        )
        if result.rowcount != 1:
            continue  # a heartbeat or a finish arrived meanwhile: the job is alive after all
        _status_event(session, job_id, values["status"], message, now=now, level=level)
        if values["status"] == "queued":
            to_enqueue.append(job_id)
        elif (
            values["status"] != "paused"
        ):  # the reaper ended it: as much an ending for the auditor as a worker's
            add_audit_entry(
                session,
                principal=REAPER,
                action="job.finished",
                object_type="job",
                object_id=job_id,
                data={"status": values["status"], "error_code": values.get("error_code")},
            )
            job_ended(session, job_id, now=now)

    return to_enqueue


def requested_gpus(session: Session, job_ids: Sequence[str]) -> dict[str, int]:
    """The GPU count each job asked for (``resources.gpus`` of its spec; 1 for jobs
    submitted before the field existed): the queue a re-publish goes to."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.spec).where(Job.id.in_(list(job_ids)))).all()
    return {
        job_id: int(((spec or {}).get("resources") or {}).get("gpus", 1)) for job_id, spec in rows
    }


def mark_enqueue_failed(session: Session, job_id: str) -> None:
    """The broker refused the message: clear ``enqueued_at`` so the next reaper pass
    publishes it at once instead of after ``requeue_queued_after_s``. Commits."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=None)
    )
    session.commit()


# ---------------------------------------------------------------------- helpers


def _status_event(
    session: Session,
    job_id: str,
    status: str,
    message: str,
    *,
    now: datetime,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    add_events(
        session,
        job_id,
        [
            {
                "level": level,
                "type": "status",
                "message": message,
                "data": {"status": status, **(data or {})},
                "created_at": now,
            }
        ],
    )


def _is_published(job_id: Any) -> Any:
    """EXISTS: a job's result exists once its final checkpoint row is committed (the
    worker commits it with the report and the output model, after storing every file).
    ``job_id``: an id, or ``Job.id`` inside a statement on ``jobs``."""
    return exists().where(Checkpoint.job_id == job_id, Checkpoint.name == "final")


def _held(job_id: str, attempt: int | None, statuses: Sequence[str] = ACTIVE_STATUSES) -> list:
    """WHERE conditions: the job is in ``statuses`` and, when ``attempt`` is given, still
    on that attempt (None: any attempt, for callers that are not a fenced worker)."""
    conditions = [Job.id == job_id, Job.status.in_(list(statuses))]
    if attempt is not None:
        conditions.append(Job.attempts == attempt)
    return conditions


def _without_nul(value: Any) -> Any:
    """``value`` with NUL characters removed from its strings (also inside JSON data):
    Postgres text and JSONB reject them, and an exception message or a record read from
    a binary file can carry one."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(item) for item in value]
    return value


def _fresh(session: Session, job_id: str) -> Job:
    """Re-read after a Core UPDATE, which the identity map does not see."""
    return session.execute(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).scalar_one()


def _job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}", param="job_id", code="job_not_found")
