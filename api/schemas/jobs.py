from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from api.schemas.common import ErrorObject
from core.db.jobs import JobRow
from core.db.tables import Checkpoint, JobEvaluation, JobEvent, JobMetric

JobStatus = Literal[
    "queued", "running", "pausing", "paused", "cancelling", "succeeded", "failed", "cancelled"
]


class CheckObject(BaseModel):
    """One figure of a verdict, with its threshold."""

    name: str
    label: str
    value: float | None
    threshold: float | str
    passed: bool | None
    description: str


class VerdictObject(BaseModel):
    """Was the forget set forgotten? ``forgotten`` only when every check passed."""

    status: Literal["forgotten", "not_forgotten", "not_verifiable"]
    forgotten: bool | None
    reason: str
    checks: list[CheckObject]
    #: on a finished job: the published model's verdict met the job's target
    target_met: bool | None = None
    utility_ratio: float | None = None


class Progress(BaseModel):
    step: int
    total_steps: int | None
    epoch: float
    trained_tokens: int
    fraction: float | None


class Resources(BaseModel):
    gpus: int


class JobObject(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: Literal["unlearn", "finetune"] = "unlearn"
    status: JobStatus
    method: str
    model: str
    forget: str | None
    train: str | None = None
    retain: str | None
    hyperparameters: dict[str, Any]
    lora: dict[str, Any] | None
    evaluation: dict[str, Any]
    prompt_template: str | None
    seed: int
    metadata: dict[str, str]
    deletion_request: str | None
    resources: Resources
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    estimated_finish: datetime | None
    attempts: int
    error: ErrorObject | None
    output_model: str | None
    report_available: bool
    target: dict[str, Any] | None = None
    continue_from: str | None = None
    #: the published model's verdict, once the job succeeded
    verdict: VerdictObject | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> JobObject:
        """From a row of ``core.db.jobs.JOB_VIEW_COLUMNS``."""
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, job: Mapping[str, Any]) -> JobObject:
        """From ``jobs`` column values; nullable ones may be missing (a new job's)."""
        spec = job["spec"]
        step, total_steps = job["step"], job.get("total_steps")
        if job["status"] == "succeeded":
            fraction = 1.0
        elif total_steps:
            fraction = min(step / total_steps, 1.0)
        else:
            fraction = None
        error = None
        if job.get("error_code") is not None:
            error = ErrorObject(
                code=job.get("error_code"),
                message=job.get("error_message"),
                param=job.get("error_param"),
            )
        kind = job.get("kind") or spec.get("kind") or "unlearn"
        return cls(
            id=job["id"],
            kind=kind,
            status=job["status"],
            method=job["method"],
            model=job["model"],
            forget=spec.get("forget") if kind == "unlearn" else None,
            train=spec.get("train"),
            retain=spec.get("retain"),
            hyperparameters=job["hyperparameters"],
            lora=spec.get("lora"),
            evaluation=spec.get("evaluation") or {},
            prompt_template=spec.get("prompt_template"),
            seed=job["seed"],
            metadata=job["metadata"],
            deletion_request=job.get("deletion_request_id"),
            # Jobs submitted before the field existed ran on one GPU.
            resources=Resources(gpus=(spec.get("resources") or {}).get("gpus", 1)),
            progress=Progress(
                step=step,
                total_steps=total_steps,
                epoch=job["epoch"],
                trained_tokens=job["trained_tokens"],
                fraction=fraction,
            ),
            created_at=job["created_at"],
            started_at=job.get("started_at"),
            finished_at=job.get("finished_at"),
            updated_at=job["updated_at"],
            estimated_finish=job.get("estimated_finish"),
            attempts=job["attempts"],
            error=error,
            output_model=job.get("output_model"),
            report_available=bool(job.get("report_available")),
            target=spec.get("target"),
            continue_from=spec.get("continue_from"),
            verdict=job.get("verdict"),
        )


class EventObject(BaseModel):
    id: int
    object: Literal["job.event"] = "job.event"
    created_at: datetime
    level: Literal["info", "warning", "error"]
    type: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def from_row(cls, event: JobEvent) -> EventObject:
        return cls(
            id=event.id,
            created_at=event.created_at,
            level=event.level,
            type=event.type,
            message=event.message,
            data=event.data,
        )


class MetricObject(BaseModel):
    step: int
    epoch: float | None
    values: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, metric: JobMetric) -> MetricObject:
        return cls(
            step=metric.step, epoch=metric.epoch, values=metric.values, created_at=metric.created_at
        )


class MetricList(BaseModel):
    """Metric rows in step order: pass ``last_step`` as ``after_step`` for more."""

    object: Literal["list"] = "list"
    data: list[MetricObject]
    has_more: bool
    last_step: int | None


class CheckpointFile(BaseModel):
    path: str
    size: int
    sha256: str
    download_url: str


class CheckpointObject(BaseModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    name: str
    step: int
    files: list[CheckpointFile]
    manifest_sha256: str
    metrics: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def from_row(cls, checkpoint: Checkpoint) -> CheckpointObject:
        base = f"/v1/jobs/{checkpoint.job_id}/checkpoints/{checkpoint.id}/files/"
        return cls(
            id=checkpoint.id,
            job_id=checkpoint.job_id,
            name=checkpoint.name,
            step=checkpoint.step,
            files=[
                CheckpointFile(
                    path=item["path"],
                    size=item["size"],
                    sha256=item["sha256"],
                    download_url=base + item["path"],
                )
                for item in checkpoint.files
            ],
            manifest_sha256=checkpoint.manifest_sha256,
            metrics=checkpoint.metrics,
            created_at=checkpoint.created_at,
        )


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    has_more: bool = False


class EvaluationObject(BaseModel):
    """One evaluation point of a training run: the probe's figures and the verdict."""

    id: int
    object: Literal["job.evaluation"] = "job.evaluation"
    job_id: str
    attempt: int
    step: int
    epoch: float | None
    created_at: datetime
    seconds: float | None
    metrics: dict[str, Any]
    verdict: VerdictObject | None
    #: the checkpoint holding this point's weights (``final``, ``last``), if kept
    checkpoint: str | None

    @classmethod
    def from_row(cls, row: JobEvaluation) -> EvaluationObject:
        return cls(
            id=row.id,
            job_id=row.job_id,
            attempt=row.attempt,
            step=row.step,
            epoch=row.epoch,
            created_at=row.created_at,
            seconds=row.seconds,
            metrics=row.metrics,
            verdict=row.verdict,
            checkpoint=row.checkpoint,
        )
