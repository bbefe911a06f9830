from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from api.schemas.common import ErrorObject, StrictBody
from api.schemas.jobs import JobStatus
from core.db.deletion_requests import DeletionRequestView
from core.spec import (
    METADATA_DESCRIPTION,
    METADATA_JSON_SCHEMA,
    METADATA_MAX_KEYS,
    check_metadata,
)

DeletionRequestStatus = Literal["open", "in_progress", "fulfilled", "needs_attention"]


class DeletionRequestCreate(StrictBody):
    subject: str = Field(
        ...,
        min_length=1,
        max_length=512,
        description="Who or what is to be forgotten, e.g. 'everything about Jane Roe'.",
    )
    description: str | None = Field(None, max_length=4096)
    external_ref: str | None = Field(
        None, max_length=256, description="Your reference, e.g. a ticket id."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description=METADATA_DESCRIPTION,
        max_length=METADATA_MAX_KEYS,
        json_schema_extra=METADATA_JSON_SCHEMA,
    )

    forget_dataset: str | None = Field(
        None,
        max_length=64,
        description="The subject's records (a dataset id, POST /v1/datasets). With `model` "
        "and `job` the service serves the request itself: it joins the open batch of "
        "requests for the same model and settings, and one job serves the batch "
        "(docs/deletion-requests.md). Without them, submit jobs with "
        '`"deletion_request": "<id>"` as before.',
    )
    model: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="The model to forget from (a registered name, e.g. a job's output).",
    )
    job: dict[str, Any] | None = Field(
        None,
        description="The job settings: a job spec (GET /v1/job-spec) without model, forget "
        "and deletion_request, e.g. {method, hyperparameters, retain, target, evaluation: "
        "{holdout}}; evaluation.holdout is required. Requests batch together only when "
        "model and settings (defaults filled in) are equal.",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str]) -> dict[str, str]:
        return check_metadata(value)


class BatchCost(BaseModel):
    """What serving the batch with one job cost, against one job per request
    (``core.batch_evidence.batch_cost``)."""

    requests_served: int
    jobs_saved: int = Field(description="requests_served - 1.")
    training_seconds: float
    evaluation_seconds: float
    request_checks_seconds: float = Field(
        description="The per-request checks batching adds (measured)."
    )
    measured_seconds: float = Field(description="training + evaluation + request checks.")
    estimated_separate_seconds: float = Field(
        description="training_seconds + requests_served x evaluation_seconds: separate jobs "
        "train on the same records in total, but each repeats the evaluation."
    )
    saved_seconds: float
    estimate: str


class DeletionBatchObject(BaseModel):
    """Requests for one model and job settings served by one job over the union of
    their records."""

    id: str
    object: Literal["deletion_batch"] = "deletion_batch"
    status: Literal["open", "dispatched"] = Field(
        description="open: collecting requests until closes_at; dispatched: job_id serves it."
    )
    model: str
    requests: list[str] = Field(description="Its requests' ids, in the order they arrived.")
    created_at: datetime
    closes_at: datetime
    dispatched_at: datetime | None
    job_id: str | None
    union_dataset: str | None = Field(
        description="The dataset of the union of the requests' records the job trains on."
    )
    cost: BatchCost | None = Field(description="Null until the job's report is written.")

    @classmethod
    def from_row(cls, batch, requests: list[str]) -> DeletionBatchObject:
        return cls(
            id=batch.id,
            status=batch.status,
            model=batch.model,
            requests=requests,
            created_at=batch.created_at,
            closes_at=batch.closes_at,
            dispatched_at=batch.dispatched_at,
            job_id=batch.job_id,
            union_dataset=batch.union_dataset_id,
            cost=BatchCost.model_validate(batch.cost) if batch.cost else None,
        )


class RequestRecordsCheck(BaseModel):
    """A batch job's check of this request's own records on its published model: the
    verdict's forgetting checks, the request's records vs the holdout set."""

    status: Literal["pending", "forgotten", "not_forgotten", "not_verifiable"]
    reason: str | None = None
    small_sample: bool | None = Field(
        None,
        description="Fewer records than a strong test needs: fulfilment then rests on the "
        "batch job's verdict over the union, which this check can only take away.",
    )
    records: dict[str, Any] | None = Field(
        None,
        description="{dataset_id, sha256, count, offset}: the records and their place in the union.",
    )
    checks: list[dict[str, Any]] = Field(default_factory=list)
    figures: dict[str, Any] | None = None


class Evidence(BaseModel):
    """What the job's evaluation report measured on the unlearned model (its summary;
    docs/report.md defines each value). Null where the report has no such measurement."""

    forget_probability: float | None = None
    forget_probability_before: float | None = None
    forget_quality: float | None = None
    forget_quality_before: float | None = None
    forget_quality_reason: str | None = None
    #: with several oracles: how many forget quality pooled, and the figure against each
    forget_quality_oracles: int | None = None
    forget_quality_by_oracle: list[float | None] | None = None
    forget_truth_ratio: float | None = None
    forget_rouge: float | None = None
    forget_rouge_before: float | None = None
    extraction_strength: float | None = None
    extraction_strength_before: float | None = None
    exact_memorization: float | None = None
    mia_auc: dict[str, float | None] | None = None
    privleak: float | None = None
    privleak_before: float | None = None
    privleak_reason: str | None = None
    verbmem: float | None = None
    knowmem: float | None = None
    model_utility: float | None = None
    model_utility_ratio: float | None = None

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> Evidence:
        return cls(**{key: summary.get(key) for key in cls.model_fields})


class LinkedVerdict(BaseModel):
    status: Literal["forgotten", "not_forgotten", "not_verifiable"]
    reason: str | None = None
    target_met: bool | None = None


class LinkedJob(BaseModel):
    id: str
    status: JobStatus
    method: str
    model: str
    created_at: datetime
    finished_at: datetime | None
    error: ErrorObject | None
    output_model: str | None
    evidence: Evidence | None = Field(description="Null until the job's report is written.")
    verdict: LinkedVerdict | None = Field(
        description="The forgetting verdict of the job's published model; null until it "
        "ends, or when it had nothing to verify against."
    )
    report_url: str | None
    request_check: RequestRecordsCheck | None = Field(
        None,
        description="A batch job (it trained on the union of several requests' records): "
        "the check of this request's own records; the request is fulfilled only when "
        "the job's verdict and this check are both forgotten. Null for a job that "
        "trained on this request's records alone.",
    )

    @classmethod
    def from_row(cls, job) -> LinkedJob:
        """From a row of ``core.db.deletion_requests.LINKED_JOB_COLUMNS``."""
        error = None
        if job.error_code is not None:
            error = ErrorObject(
                code=job.error_code, message=job.error_message, param=job.error_param
            )
        has_report = job.report_summary is not None
        return cls(
            id=job.id,
            status=job.status,
            method=job.method,
            model=job.model,
            created_at=job.created_at,
            finished_at=job.finished_at,
            error=error,
            output_model=job.output_model,
            evidence=Evidence.from_summary(job.report_summary) if has_report else None,
            verdict=LinkedVerdict.model_validate(job.verdict) if job.verdict else None,
            report_url=f"/v1/jobs/{job.id}/report.html" if has_report else None,
            request_check=_request_check(job),
        )


def _request_check(job) -> RequestRecordsCheck | None:
    if job.records_verdict is None:
        return None
    evidence = dict(job.records_evidence or {})
    return RequestRecordsCheck(
        status=job.records_verdict,
        reason=evidence.get("reason"),
        small_sample=evidence.get("small_sample"),
        records=evidence.get("records"),
        checks=evidence.get("checks") or [],
        figures=evidence.get("figures"),
    )


class RegressionCheckObject(BaseModel):
    """A later job's re-check of the request's forget records with its model, which was
    built on the certified one (docs/certificates.md, "Regression re-checks")."""

    job_id: str = Field(description="The later job whose model was re-checked.")
    certified_job_id: str = Field(description="The job the certificate names.")
    status: Literal["forgotten", "not_forgotten", "not_verifiable", "not_checked"] = Field(
        description="The forgetting verdict on the later model, or not_checked (reason says "
        "why: e.g. the forget set was shredded when its retention ran out)."
    )
    regressed: bool = Field(description="Checked, and no longer forgotten.")
    reason: str | None
    checked_at: datetime

    @classmethod
    def from_row(cls, row) -> RegressionCheckObject:
        return cls(
            job_id=row.job_id,
            certified_job_id=row.certified_job_id,
            status=row.status,
            regressed=row.regressed,
            reason=(row.result or {}).get("reason"),
            checked_at=row.checked_at,
        )


class DeletionRequestObject(BaseModel):
    id: str
    object: Literal["deletion_request"] = "deletion_request"
    subject: str
    description: str | None
    external_ref: str | None
    metadata: dict[str, str]
    status: DeletionRequestStatus = Field(
        description="Derived from the linked jobs: open (none), in_progress (one is queued, "
        "running or cancelling), fulfilled (all ended, and one succeeded with a model its "
        "forgetting verdict found forgotten; a batch job also needs the request's own "
        "records to pass, see jobs[].request_check), needs_attention (all ended, none "
        "proved forgetting, or a later job built on the certified model brought the forget "
        "records back; status_reason says why)."
    )
    status_reason: str = Field(description="Why the request has its status, and what to do.")
    fulfilled_by: str | None = Field(
        description="The job whose verified model fulfils the request (when fulfilled)."
    )
    certificate_url: str | None = Field(
        description="The signed forgetting certificate (when fulfilled): JSON; add .html "
        "for a page to print. Verify it with `obliviate verify`."
    )
    job_count: int = Field(description="Every linked job; `jobs` lists the newest 100.")
    jobs: list[LinkedJob]
    regressions: list[RegressionCheckObject] = Field(
        default_factory=list,
        description="Re-checks of the forget records by later jobs whose base model was "
        "built on the certified one, newest first.",
    )
    forget_dataset: str | None = Field(
        None, description="The subject's records, when the request was filed with them."
    )
    model: str | None = None
    job: dict[str, Any] | None = Field(
        None, description="The job settings it was filed with, defaults filled in."
    )
    batch: DeletionBatchObject | None = Field(
        None,
        description="The batch serving it (a request filed with its records): its window, "
        "job and the cost saved.",
    )
    created_at: datetime

    @classmethod
    def from_view(cls, view: DeletionRequestView) -> DeletionRequestObject:
        request = view.request
        return cls(
            forget_dataset=request.forget_dataset_id,
            model=request.model,
            job=request.job_settings,
            batch=(
                DeletionBatchObject.from_row(view.batch, list(view.batch_requests))
                if view.batch is not None
                else None
            ),
            id=request.id,
            subject=request.subject,
            description=request.description,
            external_ref=request.external_ref,
            metadata=request.metadata_,
            status=view.status,
            status_reason=view.status_reason,
            fulfilled_by=view.fulfilled_by.id if view.fulfilled_by is not None else None,
            certificate_url=(
                f"/v1/deletion-requests/{request.id}/certificate"
                if view.status == "fulfilled"
                else None
            ),
            job_count=view.job_count,
            jobs=[LinkedJob.from_row(job) for job in view.jobs],
            regressions=[RegressionCheckObject.from_row(row) for row in view.regressions],
            created_at=request.created_at,
        )


class CertificateSignature(BaseModel):
    algorithm: Literal["Ed25519"]
    key_id: str = Field(description="First 16 hex digits of sha256 of the raw public key.")
    public_key: str = Field(description="The raw public key, base64.")
    field_digests: dict[str, str] = Field(
        description="sha256 of the canonical JSON of each field of `certificate`."
    )
    value: str = Field(
        description="Ed25519 signature (base64) of the canonical JSON of {field_digests, key_id}."
    )


class CertificateDocument(BaseModel):
    """A signed forgetting certificate (docs/certificates.md)."""

    certificate: dict[str, Any]
    signature: CertificateSignature
