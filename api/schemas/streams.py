"""What a live stream carries: each Server-Sent Event's ``data`` is one of these (or a
``JobObject`` for ``event: job``), with the job it belongs to."""

from __future__ import annotations

from typing import Literal

from api.schemas.jobs import EvaluationObject, EventObject, MetricObject
from core.db.tables import JobEvaluation, JobEvent, JobMetric


class StreamEvent(EventObject):
    """``event: event``: a job event (status change, phase, warning, error)."""

    job_id: str

    @classmethod
    def from_row(cls, event: JobEvent) -> StreamEvent:
        return cls(**EventObject.from_row(event).model_dump(), job_id=event.job_id)


class StreamMetric(MetricObject):
    """``event: metric``: one training step's metric row."""

    id: int
    object: Literal["job.metric"] = "job.metric"
    job_id: str

    @classmethod
    def from_row(cls, metric: JobMetric) -> StreamMetric:
        return cls(
            id=metric.id,
            job_id=metric.job_id,
            step=metric.step,
            epoch=metric.epoch,
            values=metric.values,
            created_at=metric.created_at,
        )


class StreamEvaluation(EvaluationObject):
    """``event: evaluation``: one evaluation point of the training run (the probe's
    figures and the verdict there)."""

    @classmethod
    def from_row(cls, row: JobEvaluation) -> StreamEvaluation:
        return cls(**EvaluationObject.from_row(row).model_dump())
