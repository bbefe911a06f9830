"""Reads behind the live streams, run on the API's database threads: where the tables
stand, what changed since a poll, and the backlog a new or reconnecting subscriber
missed. Payloads are serialized here, once, off the event loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy.orm import Session

from api.schemas.jobs import JobObject
from api.streams.sources import JOB, SOURCES, StreamSource
from core.db import changes
from core.db import jobs as jobs_repo
from core.db.jobs import JobRow
from core.db.tables import TERMINAL_STATUSES

#: Job columns that change without anything a client sees changing (every heartbeat
#: bumps them), left out of the comparison that decides whether to send a snapshot.
_UNSEEN_COLUMNS = frozenset({"updated_at", "heartbeat_at", "enqueued_at", "worker_id"})

#: Rows read per table per query.
PAGE = 1000


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One Server-Sent Event before its id: what it is, whose, where it sits in its
    table (the row id; for ``job`` snapshots ``updated_at`` in microseconds), and its
    JSON, serialized once for every subscriber."""

    kind: str
    job_id: str
    position: int
    data: str
    #: a ``job`` snapshot of a job that has ended (nothing more will follow)
    final: bool = False
    #: the job's tenant: a stream of every job sends only its caller's tenant's
    tenant: str | None = None


@dataclass
class Changes:
    rows: dict[str, list[StreamItem]] = field(default_factory=dict)
    #: whether a table had more rows than one page: poll again at once
    more: bool = False
    jobs: list[StreamItem] = field(default_factory=list)
    signatures: dict[str, tuple] = field(default_factory=dict)


def microseconds(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def from_microseconds(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, tz=timezone.utc)


def row_item(source: StreamSource, row, tenant: str | None) -> StreamItem:
    data = source.to_object(row).model_dump_json()
    return StreamItem(source.kind, row.job_id, row.id, data, tenant=tenant)


def job_item(row: JobRow) -> StreamItem:
    return StreamItem(
        JOB,
        row.id,
        microseconds(row.updated_at),
        JobObject.from_row(row).model_dump_json(),
        final=row.status in TERMINAL_STATUSES,
        tenant=row.tenant_id,
    )


def job_signature(row: JobRow) -> tuple:
    """What a client sees of the job, minus the columns every heartbeat moves."""
    return tuple(value for key, value in row._mapping.items() if key not in _UNSEEN_COLUMNS)


def table_heads(session: Session) -> dict[str, int]:
    """The highest id of each followed table: where a new poller starts."""
    return {source.kind: changes.max_id(session, source.table) for source in SOURCES}


def read_changes(
    session: Session,
    *,
    after: Mapping[str, int],
    missing: Mapping[str, Sequence[int]],
    jobs_updated_after: datetime,
    signatures: Mapping[str, tuple],
) -> Changes:
    """One poll: jobs first, then the tables' new rows (so a job seen ending is never
    ahead of the rows its final transaction wrote), then the jobs those rows touched
    that the first read missed (a writer whose clock lags)."""
    found = Changes()
    rows = changes.changed_jobs(session, updated_after=jobs_updated_after)
    new_rows = {}
    for source in SOURCES:
        new = changes.rows_after(session, source.table, after[source.kind], limit=PAGE)
        found.more |= len(new) == PAGE
        new += changes.rows_with_ids(session, source.table, missing.get(source.kind, ()))
        new_rows[source] = new
    seen = {row.id for row in rows}
    touched = {row.job_id for new in new_rows.values() for row in new} - seen
    if touched:
        rows += changes.changed_jobs(session, updated_after=None, job_ids=sorted(touched))
    tenants = {row.id: row.tenant_id for row in rows}
    for source, new in new_rows.items():
        found.rows[source.kind] = [row_item(source, row, tenants.get(row.job_id)) for row in new]
    for row in rows:
        signature = job_signature(row)
        found.signatures[row.id] = signature
        if signatures.get(row.id) != signature:
            found.jobs.append(job_item(row))
    return found


def job_snapshot(session: Session, job_id: str) -> StreamItem:
    """404 ``job_not_found`` for unknown jobs."""
    return job_item(jobs_repo.get_job_row(session, job_id))


def backlog(
    session: Session,
    *,
    kind: str,
    after: int,
    through: int | None,
    job_id: str | None = None,
) -> list[StreamItem]:
    """One page of ``kind``'s rows in ``(after, through]``, of one job or of all."""
    source = next(source for source in SOURCES if source.kind == kind)
    rows = changes.rows_after(
        session, source.table, after, through=through, job_id=job_id, limit=PAGE
    )
    tenants = changes.job_tenants(session, {row.job_id for row in rows})
    return [row_item(source, row, tenants.get(row.job_id)) for row in rows]


def jobs_updated_after(session: Session, moment: datetime) -> list[StreamItem]:
    return [job_item(row) for row in changes.changed_jobs(session, updated_after=moment)]
