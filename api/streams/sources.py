"""The tables a live stream follows. Each is append-only with an integer id and a
``job_id``; its rows become Server-Sent Events named ``kind``. Following another table
is one more line in ``SOURCES``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from api.schemas.streams import StreamEvaluation, StreamEvent, StreamMetric
from core.db.tables import JobEvaluation, JobEvent, JobMetric


@dataclass(frozen=True)
class StreamSource:
    #: the SSE event name and the key of this table's position in a stream's id
    kind: str
    #: the ORM class: an integer primary key ``id`` and a ``job_id``
    table: Any
    #: a row as the API shows it
    to_object: Callable[[Any], BaseModel]


SOURCES: tuple[StreamSource, ...] = (
    StreamSource("event", JobEvent, StreamEvent.from_row),
    StreamSource("metric", JobMetric, StreamMetric.from_row),
    StreamSource("evaluation", JobEvaluation, StreamEvaluation.from_row),
)

#: the job's own state (a ``JobObject``), sent whenever what it shows changes
JOB = "job"
KINDS: tuple[str, ...] = (JOB, *(source.kind for source in SOURCES))
