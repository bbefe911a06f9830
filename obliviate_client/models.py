"""The API's objects as the client returns them: pydantic models mirroring the server's
response schemas (``api/schemas``; a test holds the two to the same fields). They accept
fields a newer server adds, so an older client keeps working."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

JobStatus = Literal[
    "queued", "running", "pausing", "paused", "cancelling", "succeeded", "failed", "cancelled"
]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DeletionRequestStatus = Literal["open", "in_progress", "fulfilled", "needs_attention"]


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ErrorObject(ApiModel):
    code: str
    message: str | None = None
    param: str | None = None


class Progress(ApiModel):
    step: int
    total_steps: int | None = None
    epoch: float
    trained_tokens: int
    fraction: float | None = None


class Check(ApiModel):
    name: str
    label: str
    value: float | None = None
    threshold: float | str
    passed: bool | None = None
    description: str


class Verdict(ApiModel):
    status: Literal["forgotten", "not_forgotten", "not_verifiable"]
    forgotten: bool | None = None
    reason: str
    checks: list[Check]
    target_met: bool | None = None
    utility_ratio: float | None = None


class Resources(ApiModel):
    gpus: int = 1


class Job(ApiModel):
    id: str
    object: Literal["job"] = "job"
    kind: Literal["unlearn", "finetune"] = "unlearn"
    status: JobStatus
    method: str
    model: str
    forget: str | None = None
    train: str | None = None
    retain: str | None = None
    hyperparameters: dict[str, Any]
    lora: dict[str, Any] | None = None
    evaluation: dict[str, Any]
    prompt_template: str | None = None
    seed: int
    metadata: dict[str, str]
    deletion_request: str | None = None
    resources: Resources = Resources()
    progress: Progress
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    estimated_finish: datetime | None = None
    attempts: int
    error: ErrorObject | None = None
    output_model: str | None = None
    report_available: bool
    target: dict[str, Any] | None = None
    continue_from: str | None = None
    #: the published model's verdict (with ``target_met``), null until finished
    verdict: Verdict | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Event(ApiModel):
    id: int
    object: Literal["job.event"] = "job.event"
    created_at: datetime
    level: Literal["info", "warning", "error"]
    type: str
    message: str
    data: dict[str, Any] | None = None
    #: set on events read from a stream
    job_id: str | None = None


class Metric(ApiModel):
    step: int
    epoch: float | None = None
    values: dict[str, Any]
    created_at: datetime
    #: set on metrics read from a stream
    id: int | None = None
    job_id: str | None = None


class Evaluation(ApiModel):
    """An evaluation point of a job's training run."""

    id: int
    object: Literal["job.evaluation"] = "job.evaluation"
    job_id: str
    attempt: int
    step: int
    epoch: float | None = None
    created_at: datetime
    seconds: float | None = None
    metrics: dict[str, Any]
    verdict: Verdict | None = None
    checkpoint: str | None = None


class CheckpointFile(ApiModel):
    path: str
    size: int
    sha256: str
    download_url: str


class Checkpoint(ApiModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    name: str
    step: int
    files: list[CheckpointFile]
    manifest_sha256: str
    metrics: dict[str, Any] | None = None
    created_at: datetime


class Dataset(ApiModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    filename: str
    format: str
    kind: str
    record_count: int
    size_bytes: int
    sha256: str
    columns: list[str]
    has_truth_ratio_fields: bool
    created_at: datetime
    encrypted: bool = False
    shredded_at: datetime | None = None


class Model(ApiModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    source: str
    kind: str
    job_id: str | None = None
    description: str | None = None
    created_at: datetime


class Method(ApiModel):
    name: str
    object: Literal["method"] = "method"
    title: str
    description: str
    paper: str | None = None
    hyperparameters_schema: dict[str, Any]
    defaults: dict[str, Any]
    #: what a job publishes: "weights", or "guard" (decoding-time; the weights do not
    #: change, so a guard job alone does not fulfil a deletion request); servers before
    #: the field listed training methods only
    output: str = "weights"
    output_description: str | None = None


class Evidence(ApiModel):
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


class LinkedJob(ApiModel):
    id: str
    status: JobStatus
    method: str
    model: str
    created_at: datetime
    finished_at: datetime | None = None
    error: ErrorObject | None = None
    output_model: str | None = None
    evidence: Evidence | None = None
    verdict: dict[str, Any] | None = None
    report_url: str | None = None
    #: a batch job: the check of this request's own records (status, reason, checks,
    #: figures, records); the request is fulfilled only when it and the job's verdict
    #: are both forgotten. None for a job that trained on the request's records alone.
    request_check: dict[str, Any] | None = None


class BatchCost(ApiModel):
    """What serving a batch with one job cost, against one job per request."""

    requests_served: int
    jobs_saved: int
    training_seconds: float
    evaluation_seconds: float
    request_checks_seconds: float
    measured_seconds: float
    estimated_separate_seconds: float
    saved_seconds: float
    estimate: str | None = None


class DeletionBatch(ApiModel):
    """Requests for one model and job settings, served by one job over their records."""

    id: str
    object: Literal["deletion_batch"] = "deletion_batch"
    status: str
    model: str
    requests: list[str]
    created_at: datetime
    closes_at: datetime
    dispatched_at: datetime | None = None
    job_id: str | None = None
    union_dataset: str | None = None
    cost: BatchCost | None = None


class RegressionCheck(ApiModel):
    """A later job's re-check of a certified request's forget records."""

    job_id: str
    certified_job_id: str
    status: str
    regressed: bool
    reason: str | None = None
    checked_at: datetime


class DeletionRequest(ApiModel):
    id: str
    object: Literal["deletion_request"] = "deletion_request"
    subject: str
    description: str | None = None
    external_ref: str | None = None
    metadata: dict[str, str]
    status: DeletionRequestStatus
    status_reason: str | None = None
    fulfilled_by: str | None = None
    certificate_url: str | None = None
    job_count: int
    jobs: list[LinkedJob]
    regressions: list[RegressionCheck] = []
    #: filed with its records, model and job settings: the batch serving it
    forget_dataset: str | None = None
    model: str | None = None
    job: dict[str, Any] | None = None
    batch: DeletionBatch | None = None
    created_at: datetime


class AuditEntry(ApiModel):
    id: int
    object: Literal["audit_entry"] = "audit_entry"
    at: datetime
    principal: str
    action: str
    object_type: str
    object_id: str
    data: dict[str, Any] | None = None
    prev_hash: str | None = None
    entry_hash: str | None = None


class AuditCheckpoint(ApiModel):
    """A signed copy of a tenant's audit chain head: keep these outside the service, and
    check them with ``obliviate audit verify --checkpoints FILE``."""

    id: int
    object: Literal["audit_checkpoint"] = "audit_checkpoint"
    #: whose chain; None for a legacy checkpoint of the service-wide chain
    tenant: str | None = None
    at: datetime
    entries: int
    head_hash: str
    algorithm: str = "Ed25519"
    key_id: str
    signature: str


class ChainCheck(ApiModel):
    object: Literal["audit_chain_check"] = "audit_chain_check"
    #: whose chain was checked (each tenant has its own)
    tenant: str | None = None
    valid: bool
    entries: int
    head_hash: str | None = None
    entry_id: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    checkpoint_id: int | None = None


class Webhook(ApiModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    description: str | None = None
    active: bool
    created_at: datetime
    disabled_at: datetime | None = None
    #: the signing secret: only in the answer to ``create``
    secret: str | None = None


class ApiKey(ApiModel):
    id: str
    object: Literal["api_key"] = "api_key"
    tenant: str
    role: str
    name: str | None = None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    #: the key itself: only in the answer to ``create``
    key: str | None = None


class DeliveryAttempt(ApiModel):
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: int


class WebhookDelivery(ApiModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    event: str
    status: str
    attempts: int
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    payload: dict[str, Any]
    attempt_log: list[DeliveryAttempt]


class Page(ApiModel, Generic[T]):
    """One cursor page of a list."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    last_id: str | int | None = None


class StreamMessage(ApiModel):
    """One Server-Sent Event of a stream, parsed: ``kind`` is ``job``, ``event``,
    ``metric`` (and ``evaluation``), or ``ready``/``end``; ``id`` the position to resume
    from."""

    kind: str
    id: str | None = None
    data: Any = None
