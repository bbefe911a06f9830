"""Live streams (Server-Sent Events) of job changes: one job's, or every job's."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse

from api.deps import ReadDatabaseDep, StreamHubDep
from api.services import streams
from api.streams.cursor import HEADER, HEADER_PATTERN, PATTERN, parse_position
from api.streams.sources import KINDS
from api.streams.stream import job_stream, jobs_stream

router = APIRouter(prefix="/v1/jobs", tags=["streams"])

StreamKind = Literal[KINDS]  # type: ignore[valid-type]

#: how the stream is described in the OpenAPI document
EVENT_STREAM = {
    200: {
        "description": "`text/event-stream`. Each event's `event` is its kind (`job`: a Job "
        "object; `event`: a StreamEvent; `metric`: a StreamMetric; `ready` and `end` carry "
        "`{}`), its `data` the object as JSON, its `id` the stream's position: send it back "
        "as `Last-Event-ID` to resume.",
        "content": {
            "text/event-stream": {
                # One server-sent event, as the fields a client parses out of it.
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string"},
                        "data": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer"},
                    },
                }
            }
        },
    }
}

LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        max_length=512,
        pattern=HEADER_PATTERN,
        description="Resume after this event id (`kind=position,...`).",
    ),
]
LastEventIdQuery = Annotated[
    str | None,
    Query(
        max_length=512,
        pattern=PATTERN,
        description="The same as the Last-Event-ID header, for clients that cannot set it.",
    ),
]


@router.get("/stream", response_class=EventSourceResponse, responses=EVENT_STREAM)
async def stream_jobs(
    hub: StreamHubDep,
    db: ReadDatabaseDep,
    types: Annotated[
        list[StreamKind] | None, Query(description="Kinds to send (repeatable); default all.")
    ] = None,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventSourceResponse:
    """Every job's changes as they happen: `job` snapshots when a job's status or
    progress changes, new `event` and `metric` rows. Without a position it starts now
    (`event: ready` first); with one it first sends what was missed."""
    cursor = last_event_id_header or last_event_id
    position = parse_position(cursor, KINDS) if cursor else None
    kinds = frozenset(types or KINDS)
    return EventSourceResponse(jobs_stream(hub, db, kinds, position))


@router.get("/{job_id}/stream", response_class=EventSourceResponse, responses=EVENT_STREAM)
async def stream_job(
    job_id: str,
    hub: StreamHubDep,
    db: ReadDatabaseDep,
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventSourceResponse:
    """One job live: its snapshot, its events and metrics since the position (all of
    them without one), then every change until it ends (`event: end`, then the stream
    closes)."""
    cursor = last_event_id_header or last_event_id
    position = parse_position(cursor, KINDS) if cursor else {}
    await db.run(streams.job_snapshot, job_id)  # 404 before the stream starts
    return EventSourceResponse(job_stream(hub, db, job_id, position))
