"""Regression re-checks: a job that starts from a model built on a certified one re-checks
the certified deletion requests' forget records with its new model (issue 9).

Which requests (:func:`certified_ancestors`): those with a certificate naming a job whose
output model is an ancestor of the new job's base model. The walk follows ``job_output``
models back through their jobs' ``model`` field, at most :data:`MAX_HOPS` jobs. A request
whose forget set was shredded (its retention ran out) cannot be re-checked: it is
reported ``not_checked`` with the reason, not failed.

The decision (:func:`regression_outcome`) is the verdict's own forgetting statistic
(``core.evaluation.verdict.forgetting_checks``: truth-ratio KS test and the membership
AUC, forget vs holdout, teacher-forced scores only) on the new model, with the certified
job's threshold. A request whose re-checked verdict is no longer ``forgotten`` regressed.

Storage (:func:`record_regression_checks`): one ``regression_checks`` row per request
and job; a request whose newest check regressed is ``needs_attention`` again
(``core.db.deletion_requests``). No torch here: the API imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.audit import WORKER, add_audit_entry
from core.db.ids import new_id
from core.db.tables import Certificate, Dataset, DeletionRequest, Job, Model, RegressionCheck
from core.tenancy import owner_tenant, scoped

#: how many jobs back the walk from a base model goes
MAX_HOPS = 5
NOT_CHECKED = "not_checked"
FORGOTTEN = "forgotten"


def ancestor_jobs(
    base_model: str, producer: Callable[[str], tuple[str, str] | None], *, max_hops: int = MAX_HOPS
) -> list[str]:
    """The jobs whose output models ``base_model`` descends from, nearest first.
    ``producer(name)`` gives ``(job_id, that job's base model)`` for a ``job_output``
    model and None for anything else (a hub id, a demo model, an unknown name)."""
    jobs: list[str] = []
    name = base_model
    for _ in range(max_hops):
        found = producer(name)
        if found is None or found[0] in jobs:  # the end, or a loop
            break
        jobs.append(found[0])
        name = found[1]
    return jobs


def _db_producer(session: Session) -> Callable[[str], tuple[str, str] | None]:
    def producer(name: str) -> tuple[str, str] | None:
        statement = (
            select(Job.id, Job.model)
            .join(Model, Model.job_id == Job.id)
            .where(Model.name == name, Model.kind == "job_output")
        )
        row = session.execute(scoped(statement, Job.tenant_id)).first()
        return (row.id, row.model) if row is not None else None

    return producer


@dataclass
class RegressionTarget:
    """A certified request to re-check: its certified job's forget and holdout sets (the
    evaluation sets the certified job used, when it named them) and verdict threshold."""

    request_id: str
    certified_job_id: str
    forget_dataset_id: str
    holdout_dataset_id: str | None
    threshold: float | None = None
    two_sided: bool = False
    #: why it cannot be re-checked (a shredded forget set, no holdout set); None: check
    not_checked: str | None = None
    #: local files, filled in by the worker that resolves the datasets
    paths: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "certified_job_id": self.certified_job_id,
            "forget_dataset_id": self.forget_dataset_id,
            "holdout_dataset_id": self.holdout_dataset_id,
            "threshold": self.threshold,
            "two_sided": self.two_sided,
            "not_checked": self.not_checked,
        }


def certified_ancestors(
    session: Session, base_model: str, continue_from: str | None = None
) -> list[RegressionTarget]:
    """The certified requests to re-check for a job whose base model is ``base_model``
    (and, with ``continue_from``, which continues that job's saved run: that job and its
    own ancestors too)."""
    producer = _db_producer(session)
    jobs = ancestor_jobs(base_model, producer)
    if continue_from is not None:
        statement = select(Job.model).where(Job.id == continue_from)
        model = session.scalar(scoped(statement, Job.tenant_id))
        if model is not None:
            chain = [continue_from, *ancestor_jobs(model, producer, max_hops=MAX_HOPS - 1)]
            jobs += [job for job in chain if job not in jobs]
    if not jobs:
        return []
    statement = (
        select(Certificate.deletion_request_id, Job, DeletionRequest.forget_dataset_id)
        .join(Job, Job.id == Certificate.job_id)
        .join(DeletionRequest, DeletionRequest.id == Certificate.deletion_request_id)
        .where(Certificate.job_id.in_(jobs))
        .order_by(Certificate.deletion_request_id)
    )
    rows = session.execute(scoped(statement, Job.tenant_id)).all()
    targets = []
    for request_id, job, request_records in rows:
        evaluation = (job.spec or {}).get("evaluation") or {}
        target = (job.spec or {}).get("target") or {}
        # A batched request's own records, not the union its batch job trained on.
        forget_id = request_records or evaluation.get("forget") or job.forget_dataset_id
        targets.append(
            RegressionTarget(
                request_id=request_id,
                certified_job_id=job.id,
                forget_dataset_id=forget_id,
                holdout_dataset_id=evaluation.get("holdout"),
                threshold=target.get("forget_threshold"),
                two_sided=target.get("membership") == "two_sided",
            )
        )
    shredded = _shredded(session, {t.forget_dataset_id for t in targets})
    for target in targets:
        if target.forget_dataset_id in shredded:
            target.not_checked = (
                f"the forget set {target.forget_dataset_id} was shredded (its retention ran "
                "out): its records cannot be re-checked"
            )
        elif target.holdout_dataset_id is None:
            target.not_checked = "the certified job had no holdout set to compare with"
    return targets


def _shredded(session: Session, dataset_ids: Iterable[str]) -> set[str]:
    ids = sorted(set(dataset_ids))
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Dataset.id).where(Dataset.id.in_(ids), Dataset.shredded_at.isnot(None))
        )
    )


def regression_outcome(
    target: RegressionTarget,
    forget: dict[str, Any] | None,
    holdout: dict[str, Any] | None,
    *,
    default_threshold: float,
) -> dict[str, Any]:
    """The re-check of one request from the new model's per-sample scores (columns
    ``truth_ratio`` and ``mia_loss``) of its forget and holdout records; the same
    forgetting checks as the verdict (utility is the new job's own verdict's)."""
    from core.evaluation.verdict import decide, forgetting_checks

    base = target.to_dict()
    if target.not_checked is not None:
        return {**base, "status": NOT_CHECKED, "regressed": False, "reason": target.not_checked}
    threshold = target.threshold if target.threshold is not None else default_threshold
    checks, missing = forgetting_checks(
        forget, holdout, threshold=threshold, two_sided=target.two_sided
    )
    verdict = decide(checks, missing=missing).to_dict()
    return {
        **base,
        "status": verdict["status"],
        "regressed": verdict["status"] != FORGOTTEN,
        "reason": verdict["reason"],
        "checks": verdict["checks"],
    }


def record_regression_checks(
    session: Session, job_id: str, outcomes: Sequence[dict[str, Any]]
) -> list[RegressionCheck]:
    """One row per outcome (flushed, not committed), and a ``deletion_request.regressed``
    audit entry for each request that regressed."""
    rows = []
    for outcome in outcomes:
        row = RegressionCheck(
            id=new_id("rc"),
            tenant_id=owner_tenant(),
            deletion_request_id=outcome["request_id"],
            job_id=job_id,
            certified_job_id=outcome["certified_job_id"],
            status=outcome["status"],
            regressed=bool(outcome.get("regressed")),
            result=dict(outcome),
        )
        session.add(row)
        rows.append(row)
        if row.regressed:
            add_audit_entry(
                session,
                principal=WORKER,
                action="deletion_request.regressed",
                object_type="deletion_request",
                object_id=row.deletion_request_id,
                data={
                    "job_id": job_id,
                    "certified_job_id": row.certified_job_id,
                    "status": row.status,
                },
            )
    session.flush()
    return rows


def regression_checks_of(session: Session, request_ids: Iterable[str]) -> dict[str, list]:
    """Each request's re-checks, newest first."""
    ids = list(request_ids)
    if not ids:
        return {}
    statement = (
        select(RegressionCheck)
        .where(RegressionCheck.deletion_request_id.in_(ids))
        .order_by(RegressionCheck.deletion_request_id, RegressionCheck.id.desc())
    )
    by_request: dict[str, list] = {}
    for row in session.scalars(statement):
        by_request.setdefault(row.deletion_request_id, []).append(row)
    return by_request
