"""One poller per API process, fanning changes out to every live stream it serves.

A stream costs a queue, not a query loop: whether 3 or 3,000 clients watch, the
process reads the database the same few times per poll interval (the jobs updated
lately, and each followed table's new rows by primary key), serializes each change
once, and hands it to the subscribers of that job and to the job-wide subscribers.
Subscribers catch up on what they missed straight from the database (the backlog up to
the hub's settled position), then take the hub's changes from there on: positions
are row ids, so the two meet without a gap or a duplicate.

A subscriber that falls ``QUEUE_SIZE`` changes behind is dropped: its stream ends, and
the client reconnects with Last-Event-ID and catches up from the database, rather than
making the process hold an unbounded backlog for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from api.database import Database
from api.services import streams
from api.services.streams import StreamItem
from api.streams.sources import JOB, KINDS, SOURCES
from api.streams.watermark import IdWatermark

log = logging.getLogger(__name__)

#: Changes a subscriber may have queued before it is dropped (and reconnects).
QUEUE_SIZE = 2000
#: Job rows are re-read this long after their ``updated_at``: workers stamp it with
#: their own clock and commit a little later, so a row can appear slightly in the past.
CLOCK_SLACK = timedelta(seconds=5)
#: How long a job's last-seen state is remembered to tell a change from a re-read.
SIGNATURE_TTL_S = 60.0
#: How often the hub polls while nobody listens (it keeps its positions current).
IDLE_INTERVAL_S = 2.0


@dataclass(eq=False)
class Subscription:
    """One stream's place in the hub: the job it follows (None: every job), the kinds
    it wants, its position per kind, and the queue the hub fills."""

    job_id: str | None
    kinds: frozenset[str]
    position: dict[str, int]
    #: a stream of every job sends only this tenant's (None: every tenant's)
    tenant: str | None = None
    #: the hub's settled position when the subscription started: the backlog to read
    #: from the database ends here, the hub's changes begin after it
    settled: dict[str, int] = field(default_factory=dict)
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: bool = False

    def accepts(self, item: StreamItem) -> bool:
        """Whether ``item`` is new to this stream; advances its position."""
        if item.kind not in self.kinds or not self.sees(item):
            return False
        if item.kind == JOB:
            self.position[JOB] = max(self.position.get(JOB, 0), item.position)
            return True
        if item.position <= self.position.get(item.kind, 0):
            return False
        self.position[item.kind] = item.position
        return True

    def sees(self, item: StreamItem) -> bool:
        return self.tenant is None or item.tenant == self.tenant

    def offer(self, item: StreamItem) -> None:
        if self.dropped or item.kind not in self.kinds or not self.sees(item):
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped = True


class StreamHub:
    def __init__(self, database: Database, *, poll_interval_s: float):
        self.database = database
        self.poll_interval_s = poll_interval_s
        self._watermarks: dict[str, IdWatermark] = {}
        self._by_job: dict[str, set[Subscription]] = {}
        self._every_job: set[Subscription] = set()
        self._signatures: dict[str, tuple] = {}
        self._signature_seen: dict[str, float] = {}
        self._jobs_checked_at = datetime.now(timezone.utc)
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._polls_started = 0
        self._polls_done = 0
        self._polled = asyncio.Condition()
        self._task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # Streams still open end now (their clients reconnect to another process).
        for subscription in [*self._every_job, *(s for g in self._by_job.values() for s in g)]:
            subscription.dropped = True
            if not subscription.queue.full():
                subscription.queue.put_nowait(None)

    @property
    def subscribers(self) -> int:
        return len(self._every_job) + sum(len(group) for group in self._by_job.values())

    # -- subscriptions -------------------------------------------------------------------
    async def subscribe(
        self,
        *,
        job_id: str | None,
        kinds: Iterable[str],
        position: dict[str, int],
        tenant: str | None = None,
    ) -> Subscription:
        await self._ready.wait()
        subscription = Subscription(
            job_id=job_id,
            tenant=tenant,
            kinds=frozenset(kinds),
            position=dict(position),
            settled={kind: mark.settled for kind, mark in self._watermarks.items()},
        )
        if job_id is None:
            self._every_job.add(subscription)
        else:
            self._by_job.setdefault(job_id, set()).add(subscription)
        self._wake.set()  # from idle to the live interval at once
        return subscription

    def settled(self) -> dict[str, int]:
        return {kind: mark.settled for kind, mark in self._watermarks.items()}

    async def caught_up(self) -> None:
        """Return after a poll that started after this call: whatever was committed
        before it has been read (a stream that starts "now" starts from there)."""
        target = self._polls_started + 1
        self._wake.set()
        async with self._polled:
            await self._polled.wait_for(lambda: self._polls_done >= target)

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.job_id is None:
            self._every_job.discard(subscription)
            return
        group = self._by_job.get(subscription.job_id)
        if group is not None:
            group.discard(subscription)
            if not group:
                del self._by_job[subscription.job_id]

    # -- polling -------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._ready.is_set():
            try:
                heads = await self.database.run(streams.table_heads)
            except Exception:  # noqa: BLE001 - the database may come up later
                log.exception("stream hub: cannot read the tables' positions; retrying")
                await asyncio.sleep(IDLE_INTERVAL_S)
                continue
            self._watermarks = {kind: IdWatermark(head) for kind, head in heads.items()}
            self._ready.set()
        while True:
            more = False
            self._polls_started += 1
            try:
                more = await self.poll()
            except Exception:  # noqa: BLE001 - one failed poll must not end every stream
                log.exception("stream hub: poll failed; retrying")
            self._polls_done = self._polls_started
            async with self._polled:
                self._polled.notify_all()
            if more:
                continue
            interval = self.poll_interval_s if self.subscribers else IDLE_INTERVAL_S
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass

    async def poll(self) -> bool:
        """Read and fan out one round of changes; True when a table had more rows than
        one read returns (poll again at once)."""
        started = datetime.now(timezone.utc)
        found = await self.database.run(
            streams.read_changes,
            after={kind: mark.highest for kind, mark in self._watermarks.items()},
            missing={kind: mark.missing for kind, mark in self._watermarks.items()},
            jobs_updated_after=self._jobs_checked_at - CLOCK_SLACK,
            signatures=self._signatures,
        )
        self._jobs_checked_at = started
        # A job's new state before its new rows: a job appears before its first event.
        for item in found.jobs:
            self._fan_out(item)
        for source in SOURCES:
            mark = self._watermarks[source.kind]
            for item in mark.add(found.rows[source.kind], id_of=lambda item: item.position):
                self._fan_out(item)
        self._remember(found.signatures)
        return found.more

    def _fan_out(self, item: StreamItem) -> None:
        for subscription in self._by_job.get(item.job_id, ()):
            subscription.offer(item)
        for subscription in self._every_job:
            subscription.offer(item)

    def _remember(self, signatures: dict[str, tuple]) -> None:
        now = time.monotonic()
        self._signatures.update(signatures)
        self._signature_seen.update(dict.fromkeys(signatures, now))
        for job_id, seen in list(self._signature_seen.items()):
            if now - seen > SIGNATURE_TTL_S:
                del self._signature_seen[job_id]
                self._signatures.pop(job_id, None)


__all__ = ["KINDS", "StreamHub", "Subscription"]
