"""Job submission, reads and cancellation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.jobs import EvaluationObject, EventObject, JobObject, MetricList, MetricObject
from api.services.idempotency import (
    body_digest,
    earlier_result,
    store_idempotency_key,
)
from api.services.models import vet_model_location
from core.datasets import shredded_error
from core.db import jobs as repo
from core.db.artifacts import get_report
from core.db.audit import add_audit_entry
from core.db.jobs import JobRow
from core.db.references import existing_references
from core.errors import InvalidRequest, NotFound
from core.queue import enqueue_job
from core.settings import Settings
from core.spec import EVALUATION_DATASET_FIELDS, JobSpec, parse_job_spec

#: The evaluation settings that name a model (those naming a dataset:
#: EVALUATION_DATASET_FIELDS). A test fails when EvaluationSpec grows a text field not
#: listed in one of them.
EVALUATION_MODEL_FIELDS = ("oracle",)


def submit_job(
    session: Session,
    settings: Settings,
    celery: Celery,
    body: dict[str, Any],
    *,
    principal: str,
    idempotency_key: str | None = None,
) -> tuple[JobObject, bool]:
    """Validate, insert the job, its first event and its audit entry, commit, then
    enqueue.

    Returns ``(job, created)``: ``created`` is False when an earlier request with the
    same idempotency key made this job. If the broker is down the job stays ``queued``
    and the reaper publishes it later; the request still succeeds.
    """
    request_sha256 = body_digest(body)
    if idempotency_key is not None:
        earlier = _replay(session, principal, idempotency_key, request_sha256)
        if earlier is not None:
            return earlier, False

    spec = parse_job_spec(body)
    hyperparameters = spec.method_hyperparameters().model_dump(mode="json")
    check_references(session, settings, spec)
    job = repo.insert_job(
        session, spec, spec.primary_data, spec.retain, hyperparameters=hyperparameters
    )
    add_audit_entry(
        session,
        principal=principal,
        action="job.submitted",
        object_type="job",
        object_id=job["id"],
        data={
            "method": spec.method,
            "model": spec.model,
            "kind": spec.kind,
            "forget": spec.forget,
            "train": spec.train,
            "deletion_request": spec.deletion_request,
        },
    )
    if idempotency_key is not None and not store_idempotency_key(
        session, principal, idempotency_key, request_sha256, job_id=job["id"]
    ):
        return _replay(session, principal, idempotency_key, request_sha256), False
    session.commit()
    if not enqueue_job(celery, job["id"], spec.resources.gpus):
        repo.mark_enqueue_failed(session, job["id"])
    return JobObject.from_mapping(job), True


def check_references(session: Session, settings: Settings, spec: JobSpec) -> None:
    """Every data reference must be an uploaded dataset, every model one we may load,
    and the deletion request one that exists: fail now with the field's name rather
    than minutes later on a worker. One query checks all of them."""
    evaluation = spec.evaluation
    datasets: list[tuple[str, str]] = [
        ("forget" if spec.kind == "unlearn" else "train", spec.primary_data)
    ]
    if spec.retain is not None:
        datasets.append(("retain", spec.retain))
    for field in EVALUATION_DATASET_FIELDS:
        value = getattr(evaluation, field)
        if value is not None:
            datasets.append((f"evaluation.{field}", value))
    datasets += [(f"evaluation.utility.{i}", value) for i, value in enumerate(evaluation.utility)]

    models = [("model", spec.model)]
    oracle_jobs = []
    for index, oracle in enumerate(evaluation.oracles):
        param = evaluation.oracle_param(index)
        if oracle.startswith("job:"):
            oracle_jobs.append((param, oracle.removeprefix("job:")))
        else:
            models.append((param, oracle))
    registered = []
    for param, reference in models:
        location = vet_model_location(reference, settings, param=param)
        if location.kind == "registered":
            registered.append((param, location.value))

    known = existing_references(
        session,
        dataset_ids=[value for _, value in datasets],
        model_names=[name for _, name in registered],
        deletion_request_ids=[spec.deletion_request] if spec.deletion_request else [],
    )
    for param, value in datasets:
        if value in known.shredded_datasets:
            raise shredded_error(value, param)
        if value not in known.datasets:
            raise InvalidRequest(
                f"{param}: no dataset with id {value!r}; upload it with POST /v1/datasets",
                param=param,
                code="unknown_dataset",
            )
    for param, name in registered:
        if name not in known.models:
            raise InvalidRequest(
                f"{param}: no model named {name!r}; see GET /v1/models or register one",
                param=param,
                code="unknown_model",
            )
    if spec.deletion_request is not None and spec.deletion_request not in known.deletion_requests:
        raise InvalidRequest(
            f"deletion_request: no deletion request with id {spec.deletion_request!r}; "
            "create one with POST /v1/deletion-requests",
            param="deletion_request",
            code="unknown_deletion_request",
        )
    for param, job_id in oracle_jobs:
        _check_oracle_job(session, job_id, param)
    if spec.continue_from is not None:
        _check_continued_job(session, spec)


def _check_continued_job(session: Session, spec: JobSpec) -> None:
    """A job continues one of the same kind, method and data that saved a run."""
    param = "continue_from"
    try:
        row = repo.get_job_row(session, spec.continue_from)
    except NotFound:
        raise InvalidRequest(
            f"{param}: no job with id {spec.continue_from!r}", param=param, code="unknown_job"
        ) from None
    earlier = row.spec
    differs = [
        field
        for field in ("kind", "model", "forget", "train", "retain", "method", "lora")
        if earlier.get(field) != spec.model_dump(mode="json").get(field)
    ]
    if differs:
        raise InvalidRequest(
            f"{param}: job {spec.continue_from} differs in {', '.join(differs)}; a job can only "
            "continue one with the same kind, model, data, method and LoRA settings",
            param=param,
            code="not_continuable",
        )
    if row.status != "succeeded":
        raise InvalidRequest(
            f"{param}: job {spec.continue_from} is {row.status}; only a succeeded job can be "
            "continued (a paused one is resumed: POST /v1/jobs/{id}/resume)",
            param=param,
            code="not_continuable",
        )


def _check_oracle_job(session: Session, job_id: str, param: str) -> None:
    try:
        row = repo.get_job_row(session, job_id)
    except NotFound:  # a bad field of this request, not a missing resource: 422
        raise InvalidRequest(
            f"{param}: no job with id {job_id!r}", param=param, code="unknown_oracle_job"
        ) from None
    if row.status != "succeeded" or not row.report_available:
        raise InvalidRequest(
            f"{param}: job {job_id} has no evaluation report to reuse (status {row.status})",
            param=param,
            code="oracle_not_ready",
        )
    # Only a job that evaluated an oracle stored its statistics; its summary then has a
    # forget quality. Checked here so the worker does not fail minutes later.
    report = get_report(session, job_id)
    if report is None or (report.summary or {}).get("forget_quality") is None:
        raise InvalidRequest(
            f"{param}: job {job_id} evaluated no oracle, so it stored no oracle statistics; "
            "give the oracle as a model, or a job that had one",
            param=param,
            code="oracle_not_found",
        )


def _replay(session: Session, principal: str, key: str, request_sha256: str) -> JobObject | None:
    job_id = earlier_result(session, principal, key, request_sha256, made="job_id")
    return None if job_id is None else JobObject.from_row(repo.get_job_row(session, job_id))


def get_job(session: Session, job_id: str) -> JobRow:
    return repo.get_job_row(session, job_id)


def job_etag(row: JobRow) -> str:
    """Weak: it changes whenever anything a dashboard shows changes (every state change
    bumps updated_at), without hashing the whole body."""
    stamp = f"{row.updated_at.timestamp():.6f}-{row.status}-{row.step}-{int(row.report_available)}"
    return f'W/"{stamp}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def list_jobs(
    session: Session,
    *,
    statuses: Sequence[str],
    method: str | None,
    metadata: dict[str, str],
    updated_after: datetime | None,
    after: str | None,
    limit: int,
) -> ListObject[JobObject]:
    page = repo.list_jobs(
        session,
        statuses=statuses,
        method=method,
        metadata=metadata,
        updated_after=updated_after,
        after=after,
        limit=limit,
    )
    data = [JobObject.from_row(row) for row in page.items]
    return ListObject[JobObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def cancel_job(session: Session, job_id: str, *, principal: str) -> JobObject:
    repo.request_cancel(session, job_id, principal=principal)
    session.commit()
    return JobObject.from_row(repo.get_job_row(session, job_id))


def list_events(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> ListObject[EventObject]:
    repo.get_job(session, job_id)  # 404 for unknown jobs rather than an empty list
    page = repo.list_events(session, job_id, after=after, limit=limit)
    data = [EventObject.from_row(row) for row in page.items]
    return ListObject[EventObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def list_metrics(
    session: Session, job_id: str, *, after_step: int | None, limit: int
) -> MetricList:
    repo.get_job(session, job_id)
    page = repo.list_metrics(session, job_id, after_step=after_step, limit=limit)
    data = [MetricObject.from_row(row) for row in page.items]
    return MetricList(data=data, has_more=page.has_more, last_step=data[-1].step if data else None)


def pause_job(session: Session, job_id: str, *, principal: str) -> JobObject:
    job = repo.request_pause(session, job_id)
    add_audit_entry(
        session,
        principal=principal,
        action="job.pause_requested",
        object_type="job",
        object_id=job_id,
        data={"status": job.status},
    )
    session.commit()
    return JobObject.from_row(repo.get_job_row(session, job_id))


def resume_job(session: Session, celery: Celery, job_id: str, *, principal: str) -> JobObject:
    job = repo.resume_job(session, job_id)
    add_audit_entry(
        session,
        principal=principal,
        action="job.resumed",
        object_type="job",
        object_id=job_id,
        data={"status": job.status},
    )
    session.commit()
    gpus = repo.requested_gpus(session, [job_id]).get(job_id, 1)
    if job.status == "queued" and not enqueue_job(celery, job_id, gpus):
        repo.mark_enqueue_failed(session, job_id)
    return JobObject.from_row(repo.get_job_row(session, job_id))


def list_evaluations(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> ListObject[EvaluationObject]:
    from core.db.evaluations import list_evaluations as list_points

    repo.get_job(session, job_id)
    page = list_points(session, job_id, after=after, limit=limit)
    data = [EvaluationObject.from_row(row) for row in page.items]
    return ListObject[EvaluationObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )
