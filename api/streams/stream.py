"""The Server-Sent Events of one stream: catch up from the database, then follow the
hub. Every event's ``id`` is the stream's position after it (see ``cursor``).

Events are encoded here and written in batches: whatever the hub queued for a
subscriber while it was sending goes out as one write, which under a burst (a poll that
found many changes, fanned out to many streams) costs far less than one write each."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from api.database import Database
from api.services import streams
from api.services.streams import StreamItem, microseconds
from api.streams.cursor import format_position
from api.streams.hub import CLOCK_SLACK, StreamHub, Subscription
from api.streams.sources import JOB, KINDS, SOURCES
from core.db.types import utcnow
from core.tenancy import current_tenant

#: How long a browser waits before reconnecting (the SSE ``retry`` field).
RETRY_MS = 2000
END = "end"
READY = "ready"


def _encode(kind: str, data: str, position: dict[str, int], retry: int | None = None) -> bytes:
    return ServerSentEvent(
        data, event=kind, id=format_position(position), retry=retry, sep="\n"
    ).encode()


def _message(subscription: Subscription, item: StreamItem) -> bytes:
    return _encode(item.kind, item.data, subscription.position)


async def _backlog(
    database: Database,
    subscription: Subscription,
    *,
    job_id: str | None,
    through: dict[str, int] | None,
) -> AsyncIterator[bytes]:
    """The rows a subscriber missed, table by table, page by page; ``through`` None:
    up to the newest (the job has ended, nothing is in flight)."""
    for source in SOURCES:
        if source.kind not in subscription.kinds:
            continue
        while True:
            page = await database.run(
                streams.backlog,
                kind=source.kind,
                after=subscription.position.get(source.kind, 0),
                through=None if through is None else through[source.kind],
                job_id=job_id,
            )
            chunk = b"".join(
                _message(subscription, item) for item in page if subscription.accepts(item)
            )
            if chunk:
                yield chunk
            if len(page) < streams.PAGE:
                break


async def _live(subscription: Subscription) -> AsyncIterator[list[StreamItem]]:
    """The hub's changes, as many as are queued at a time, until the subscription is
    dropped (the client reconnects and catches up from the database)."""
    queue = subscription.queue
    while not (subscription.dropped and queue.empty()):
        batch = [await queue.get()]
        while not queue.empty():
            batch.append(queue.get_nowait())
        if None in batch:
            batch = batch[: batch.index(None)]
            if batch:
                yield batch
            return
        yield batch


async def job_stream(
    hub: StreamHub, database: Database, job_id: str, position: dict[str, int]
) -> AsyncIterator[bytes]:
    """A job's snapshot, its rows after ``position``, then its changes until it ends:
    a final snapshot, the last rows, and ``event: end``. A snapshot is always sent
    first, so ``position`` only holds the tables' positions."""
    position = {kind: value for kind, value in position.items() if kind != JOB}
    subscription = await hub.subscribe(job_id=job_id, kinds=KINDS, position=position)
    try:
        # Read after subscribing: a change in between reaches the queue, not the void.
        snapshot = await database.run(streams.job_snapshot, job_id)
        subscription.accepts(snapshot)
        yield _encode(snapshot.kind, snapshot.data, subscription.position, retry=RETRY_MS)
        async for message in _backlog(
            database, subscription, job_id=job_id, through=subscription.settled
        ):
            yield message
        final = snapshot.final
        if not final:
            async for batch in _live(subscription):
                chunk = []
                for item in batch:
                    if item.kind == JOB and item.position <= subscription.position.get(JOB, 0):
                        continue  # a state older than one already sent
                    if subscription.accepts(item):
                        chunk.append(_message(subscription, item))
                    final = item.kind == JOB and item.final
                    if final:
                        break
                if chunk:
                    yield b"".join(chunk)
                if final:
                    break
        if final:
            # The job's last transaction committed before it read as ended: read the rest.
            async for message in _backlog(database, subscription, job_id=job_id, through=None):
                yield message
            yield _encode(END, "{}", subscription.position)
    finally:
        hub.unsubscribe(subscription)


async def jobs_stream(
    hub: StreamHub, database: Database, kinds: frozenset[str], position: dict[str, int] | None
) -> AsyncIterator[bytes]:
    """Every job's changes. Fresh (``position`` None): from now on, opened by
    ``event: ready``. Resumed: first what was missed since ``position``."""
    subscription = await hub.subscribe(
        job_id=None, kinds=kinds, position=position or {}, tenant=current_tenant()
    )
    try:
        if position is None:
            started = microseconds(utcnow())
            await hub.caught_up()
            subscription.position = {**hub.settled(), JOB: started}
        else:
            for kind, settled in subscription.settled.items():
                subscription.position.setdefault(kind, settled)
        yield _encode(READY, "{}", subscription.position, retry=RETRY_MS)
        if position is not None:
            if JOB in kinds and JOB in position:
                since = streams.from_microseconds(position[JOB]) - CLOCK_SLACK
                changed = await database.run(streams.jobs_updated_after, since)
                chunk = b"".join(
                    _message(subscription, item) for item in changed if subscription.accepts(item)
                )
                if chunk:
                    yield chunk
            async for message in _backlog(
                database, subscription, job_id=None, through=subscription.settled
            ):
                yield message
        async for batch in _live(subscription):
            chunk = b"".join(
                _message(subscription, item) for item in batch if subscription.accepts(item)
            )
            if chunk:
                yield chunk
    finally:
        hub.unsubscribe(subscription)
