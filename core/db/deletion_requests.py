"""Deletion requests and the jobs that serve them.

A request's status is derived from its jobs in the query that reads it, never stored,
so it cannot disagree with them:

Jobs link to requests through ``job_deletion_requests``: a job submitted with
``deletion_request`` links to that one, a batch job (``core.deletion_batches``) to every
request of its batch. A batch job trained on a union of records, so for each of its
requests the link also holds the check of that request's own records
(``records_verdict``; ``core.batch_evidence``); a batch job proves forgetting for a
request only when its verdict is ``forgotten`` *and* that check is ``forgotten``.

- ``open``: no job links to it (a batched request waiting for its batch's window to
  close is open too; ``batch`` says when it closes);
- ``in_progress``: a linked job is queued, running or cancelling (even when an earlier
  one succeeded: the request is not served until every job it asked for has ended);
- ``fulfilled``: every linked job ended and one of them succeeded with a model the
  forgetting verdict found ``forgotten`` (``jobs.verdict``: the forget set is treated
  like data the model never saw, utility above the floor; see
  ``core.evaluation.verdict``). A job that merely ran to the end proves nothing;
- ``needs_attention``: every linked job ended and none of them proved forgetting
  (failed, cancelled, or succeeded with a verdict of ``not_forgotten`` or
  ``not_verifiable``); ``status_reason`` says which and why. Also a fulfilled request
  whose newest regression re-check (``regression_checks``, ``core.regressions``: a later
  job built on the certified model) found the forget records back, after it was
  fulfilled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, case, exists, func, select
from sqlalchemy.orm import Session

from core.db.ids import is_id, new_id
from core.db.pagination import Page
from core.db.tables import (
    TERMINAL_STATUSES,
    Dataset,
    DeletionRequest,
    Job,
    JobDeletionRequest,
    Model,
    RegressionCheck,
    Report,
)
from core.errors import NotFound
from core.tenancy import owner_tenant, scoped

DELETION_REQUEST_STATUSES = ("open", "in_progress", "fulfilled", "needs_attention")
#: the verdict that fulfils a request
FORGOTTEN = "forgotten"
#: How many linked jobs (the newest) a request shows; ``job_count`` counts them all.
MAX_LINKED_JOBS = 100

_jobs = Job.__table__
_requests = DeletionRequest.__table__
_links = JobDeletionRequest.__table__

#: the jobs of a request: through the link table (its index on deletion_request_id)
_linked_jobs_from = _jobs.join(_links, _links.c.job_id == _jobs.c.id)
_linked = _links.c.deletion_request_id == _requests.c.id
#: a guard (GUARD, generation-time) blocks answers at decoding but leaves the data in
#: the weights: it protects what is served, it does not fulfil a request to forget
GUARD_METHOD = "guard"


def _proves(jobs, links):
    """The job succeeded with a model its verdict found forgotten, and (a batch job)
    the request's own records passed too."""
    return (
        (jobs.c.status == "succeeded")
        & (jobs.c.method != GUARD_METHOD)
        & (jobs.c.verdict["status"].as_string() == FORGOTTEN)
        & (links.c.records_verdict.is_(None) | (links.c.records_verdict == FORGOTTEN))
    )


_proved_forgotten = _proves(_jobs, _links)
#: Correlated subqueries over the link table's index on deletion_request_id: one
#: aggregate row per request (count() of no rows is 0, so a request without jobs is
#: "open").
_JOBS_STATUS = (
    select(
        case(
            (func.count() == 0, "open"),
            (func.count(case((_jobs.c.status.not_in(TERMINAL_STATUSES), 1))) > 0, "in_progress"),
            (func.count(case((_proved_forgotten, 1))) > 0, "fulfilled"),
            else_="needs_attention",
        )
    )
    .select_from(_linked_jobs_from)
    .where(_linked)
    .scalar_subquery()
)
_checks = RegressionCheck.__table__
_proved = _jobs.alias("proved")
_proved_links = _links.alias("proved_links")
#: when the request was last proved forgotten, and its newest checked re-check after that
_FULFILLED_AT = (
    select(func.max(_proved.c.finished_at))
    .select_from(_proved.join(_proved_links, _proved_links.c.job_id == _proved.c.id))
    .where(
        _proved_links.c.deletion_request_id == _requests.c.id,
        _proves(_proved, _proved_links),
    )
    .correlate(_requests)
    .scalar_subquery()
)
_LAST_CHECK_AT = (
    select(func.max(_checks.c.checked_at))
    .where(_checks.c.deletion_request_id == _requests.c.id, _checks.c.status != "not_checked")
    .correlate(_requests)
    .scalar_subquery()
)
_REGRESSED = (
    exists()
    .where(
        _checks.c.deletion_request_id == _requests.c.id,
        _checks.c.regressed.is_(True),
        _checks.c.checked_at == _LAST_CHECK_AT,
        _checks.c.checked_at > _FULFILLED_AT,
    )
    .correlate(_requests)
)
_STATUS = case(
    (and_(_JOBS_STATUS == "fulfilled", _REGRESSED), "needs_attention"), else_=_JOBS_STATUS
)
_JOB_COUNT = select(func.count()).select_from(_links).where(_linked).scalar_subquery()
_VIEW = select(DeletionRequest, _STATUS.label("status"), _JOB_COUNT.label("job_count"))

#: What a request shows of each linked job: its state, output model and report summary.
LINKED_JOB_COLUMNS = (
    _jobs.c.id,
    _links.c.deletion_request_id,
    _links.c.records_verdict,
    _links.c.records_evidence,
    _jobs.c.status,
    _jobs.c.method,
    _jobs.c.model,
    _jobs.c.created_at,
    _jobs.c.finished_at,
    _jobs.c.error_code,
    _jobs.c.error_message,
    _jobs.c.error_param,
    _jobs.c.verdict,
    Model.name.label("output_model"),
    Report.summary.label("report_summary"),
)


@dataclass
class DeletionRequestView:
    """A request with what its jobs say: derived status, job count, the newest jobs."""

    request: DeletionRequest
    status: str
    job_count: int
    jobs: Sequence[Row] = field(default_factory=list)  # rows of LINKED_JOB_COLUMNS
    #: regression re-checks by later jobs (``RegressionCheck`` rows), newest first
    regressions: Sequence[RegressionCheck] = field(default_factory=list)
    #: the batch serving a request filed with its records (``DeletionBatch``), and the
    #: ids of that batch's requests
    batch: Any = None
    batch_requests: Sequence[str] = field(default_factory=list)

    @property
    def regressed_by(self) -> RegressionCheck | None:
        """The newest re-check, when it found the forget records back (then the request
        needs attention)."""
        checked = [r for r in self.regressions if r.status != "not_checked"]
        if self.status == "needs_attention" and checked and checked[0].regressed:
            return checked[0]
        return None

    @property
    def fulfilled_by(self) -> Row | None:
        """The newest linked job that proved forgetting (None unless ``fulfilled``)."""
        if self.status != "fulfilled":
            return None
        return next((job for job in self.jobs if proved_forgotten(job)), None)

    @property
    def status_reason(self) -> str:
        """Why the request has its status, in words a compliance officer can act on."""
        if self.status == "open" and self.batch is not None:
            return (
                f"waiting in batch {self.batch.id} with {len(self.batch_requests)} "
                f"request(s) for model {self.batch.model}; it is served by one job when its "
                f"window closes at {self.batch.closes_at.isoformat()} (or on POST "
                "/v1/deletion-requests/batches/flush)"
            )
        if self.status == "open":
            return "no job serves it yet: submit one with this deletion_request"
        if self.status == "in_progress":
            pending = next((j for j in self.jobs if j.status not in TERMINAL_STATUSES), None)
            return f"job {pending.id} is {pending.status}" if pending else "a job is running"
        if self.status == "fulfilled":
            job = self.fulfilled_by
            return f"job {job.id} verified that its model forgot: {job.verdict.get('reason')}"
        regressed = self.regressed_by
        if regressed is not None:
            return (
                f"job {regressed.job_id}, built on the model of certified job "
                f"{regressed.certified_job_id}, brought the forget records back (re-check "
                f"verdict {regressed.status}: {regressed.result.get('reason')}). Submit "
                f"another unlearning job on {regressed.job_id}'s model"
            )
        return _attention_reason(self.jobs)


def proved_forgotten(job: Row) -> bool:
    return (
        job.status == "succeeded"
        and job.method != GUARD_METHOD
        and (job.verdict or {}).get("status") == FORGOTTEN
        and job.records_verdict in (None, FORGOTTEN)
    )


def _attention_reason(jobs: Sequence[Row]) -> str:
    succeeded = next((job for job in jobs if job.status == "succeeded"), None)
    if succeeded is not None and succeeded.method == GUARD_METHOD:
        return (
            f"job {succeeded.id} built a guard: it keeps the subject out of the guarded "
            "model's answers, but the data stays in the weights. Serve the guarded variant "
            "meanwhile, and submit an unlearning job to fulfil the request"
        )
    if succeeded is not None and succeeded.records_verdict not in (None, FORGOTTEN):
        verdict = succeeded.verdict or {}
        evidence = succeeded.records_evidence or {}
        if verdict.get("status") == FORGOTTEN:
            return (
                f"batch job {succeeded.id} verified that its model forgot the union of the "
                f"batch's records, but this request's own records are "
                f"{succeeded.records_verdict}: {evidence.get('reason')}. File the request "
                "again, or submit a job for its records alone"
            )
    if succeeded is not None:
        verdict = succeeded.verdict or {}
        if not verdict:
            return (
                f"job {succeeded.id} succeeded without a forgetting verdict (no evaluation "
                "with a holdout set): nothing shows the data was forgotten; submit a job "
                "with evaluation.holdout and a target"
            )
        return (
            f"job {succeeded.id} succeeded but its verdict is {verdict.get('status')}: "
            f"{verdict.get('reason')}. Submit another job (a larger budget, another "
            "method, or a lower utility floor)"
        )
    if not jobs:
        return "no linked job proved forgetting"
    newest = jobs[0]
    cause = f" ({newest.error_code}: {newest.error_message})" if newest.error_code else ""
    return f"no linked job succeeded: the newest, {newest.id}, {newest.status}{cause}"


def create_deletion_request(
    session: Session,
    *,
    subject: str,
    description: str | None = None,
    external_ref: str | None = None,
    metadata: dict[str, str] | None = None,
    forget_dataset_id: str | None = None,
    model: str | None = None,
    job_settings: dict[str, Any] | None = None,
) -> DeletionRequestView:
    """Insert a request (flushed, not committed); it is ``open``, with no jobs yet.
    With its records, model and job settings the caller then puts it in a batch
    (``core.db.deletion_batches.join_open_batch``)."""
    request = DeletionRequest(
        id=new_id("dr"),
        tenant_id=owner_tenant(),
        subject=subject,
        description=description,
        external_ref=external_ref,
        metadata_=dict(metadata or {}),
        forget_dataset_id=forget_dataset_id,
        model=model,
        job_settings=job_settings,
    )
    session.add(request)
    session.flush()
    return DeletionRequestView(request, status="open", job_count=0)


def get_deletion_request(session: Session, request_id: str) -> DeletionRequestView:
    row = None
    if is_id(request_id, "dr"):
        statement = _VIEW.where(DeletionRequest.id == request_id)
        row = session.execute(scoped(statement, DeletionRequest.tenant_id)).first()
    if row is None:
        raise NotFound(
            f"no deletion request with id {request_id!r}",
            param="deletion_request_id",
            code="deletion_request_not_found",
        )
    return _with_jobs(session, [row])[0]


def list_deletion_requests(
    session: Session,
    *,
    statuses: Sequence[str] = (),
    after: str | None = None,
    limit: int = 20,
) -> Page[DeletionRequestView]:
    """Newest first; ``after`` is the last id of the previous page."""
    statement = scoped(_VIEW, DeletionRequest.tenant_id)
    if statuses:
        statement = statement.where(_STATUS.in_(list(statuses)))
    if after is not None:
        statement = statement.where(DeletionRequest.id < after)
    statement = statement.order_by(DeletionRequest.id.desc()).limit(limit + 1)
    rows = session.execute(statement).all()
    return Page(items=_with_jobs(session, rows[:limit]), has_more=len(rows) > limit)


def _with_jobs(session: Session, rows: Sequence[Row]) -> list[DeletionRequestView]:
    from core.db.deletion_batches import batches_by_id, member_ids
    from core.regressions import regression_checks_of

    jobs = _linked_jobs(session, [row.DeletionRequest.id for row in rows if row.job_count])
    checks = regression_checks_of(
        session, [row.DeletionRequest.id for row in rows if row.job_count]
    )
    batch_ids = [row.DeletionRequest.batch_id for row in rows if row.DeletionRequest.batch_id]
    batches = batches_by_id(session, batch_ids)
    members = member_ids(session, batch_ids)
    return [
        DeletionRequestView(
            row.DeletionRequest,
            status=row.status,
            job_count=row.job_count,
            jobs=jobs.get(row.DeletionRequest.id, []),
            regressions=checks.get(row.DeletionRequest.id, []),
            batch=batches.get(row.DeletionRequest.batch_id),
            batch_requests=members.get(row.DeletionRequest.batch_id, []),
        )
        for row in rows
    ]


def _linked_jobs(session: Session, request_ids: Iterable[str]) -> dict[str, list[Row]]:
    """The newest MAX_LINKED_JOBS jobs of each request, newest first, in one query."""
    request_ids = list(request_ids)
    if not request_ids:
        return {}
    rank = func.row_number().over(
        partition_by=_links.c.deletion_request_id, order_by=_jobs.c.id.desc()
    )
    ranked = (
        select(*LINKED_JOB_COLUMNS, rank.label("rank"))
        .select_from(
            _linked_jobs_from.outerjoin(Model, Model.id == _jobs.c.output_model_id).outerjoin(
                Report, Report.job_id == _jobs.c.id
            )
        )
        .where(_links.c.deletion_request_id.in_(request_ids))
        .subquery()
    )
    statement = (
        select(*(ranked.c[column.name] for column in LINKED_JOB_COLUMNS))
        .where(ranked.c.rank <= MAX_LINKED_JOBS)
        .order_by(ranked.c.deletion_request_id, ranked.c.id.desc())
    )
    by_request: dict[str, list[Row]] = {}
    for job in session.connection().execute(statement):
        by_request.setdefault(job.deletion_request_id, []).append(job)
    return by_request


#: The evaluation settings that hold the subject's data too (not retain, holdout, utility).
_FORGET_SIDE_EVALUATION_FIELDS = ("forget", "knowmem_forget")


def forget_sets_due(session: Session, fulfilled_before: datetime) -> list[str]:
    """The datasets to shred once their retention ran out: the forget sets (and forget-
    side evaluation sets) of jobs linked to a request fulfilled before
    ``fulfilled_before``, not shredded yet, and not the forget set of any other request
    still waiting (open, in progress, needing attention, or fulfilled more recently),
    which may need it again. A request was fulfilled when its last linked job ended."""
    fulfilled_at = (
        select(func.max(_jobs.c.finished_at))
        .select_from(_linked_jobs_from)
        .where(_linked)
        .scalar_subquery()
    )
    due = select(_requests.c.id).where(_STATUS == "fulfilled", fulfilled_at <= fulfilled_before)
    # A batch job's forget set is the union of its requests' records: it is due only
    # when every request of the batch is, like any set two requests share.
    rows = session.execute(
        select(
            _links.c.deletion_request_id.in_(due).label("due"),
            _jobs.c.forget_dataset_id,
            _jobs.c.spec,
            _requests.c.forget_dataset_id.label("request_records"),
        ).select_from(
            _linked_jobs_from.join(_requests, _requests.c.id == _links.c.deletion_request_id)
        )
    )
    due_sets: set[str] = set()
    kept_sets: set[str] = set()
    for row in rows:
        evaluation = row.spec.get("evaluation") or {}
        named = {evaluation.get(field) for field in _FORGET_SIDE_EVALUATION_FIELDS}
        named.add(row.request_records)
        (due_sets if row.due else kept_sets).update({row.forget_dataset_id, *named} - {None})
    candidates = sorted(due_sets - kept_sets)
    if not candidates:
        return []
    return list(
        session.scalars(
            select(Dataset.id)
            .where(Dataset.id.in_(candidates), Dataset.shredded_at.is_(None))
            .order_by(Dataset.id)
        )
    )
