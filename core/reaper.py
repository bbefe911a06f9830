"""The reaper: no job stays ``running`` after its worker died, and no ``queued`` job is
lost with a broker message (the database is the source of truth; the broker only
carries messages). Its thread also runs the hourly retention sweep that shreds forget
sets (``core.shredding``), signs checkpoints of the audit chain's head
(``core.audit_checkpoints``), and, every pass, turns the batches of deletion requests
whose window closed into jobs (``core.deletion_batches``).

It runs as a thread in every API process rather than as a Celery task: a task would
wait in the same queue behind the long training job it is meant to watch. Several API
replicas reaping at once is safe: every transition is a conditional UPDATE.
"""

from __future__ import annotations

import logging
import threading
import time

from core.audit_checkpoints import checkpoint_now
from core.certificates import load_or_create_private_key
from core.db.jobs import mark_enqueue_failed, reap_stale_jobs, requested_gpus
from core.db.types import utcnow
from core.deletion_batches import dispatch_due
from core.queue import all_queues, enqueue_job, waiting_job_ids
from core.settings import Settings
from core.shredding import sweep_retention

log = logging.getLogger(__name__)


class LostMessages:
    """Which queued jobs have really lost their message, as opposed to waiting behind
    others: a job is lost once its message has been missing from the broker's queues at
    every pass for ``grace_s`` (and at two passes at least).

    Why not by age alone: a job waiting behind a backlog is old but its message is
    still in the queue, and re-publishing it (as the age rule did, 14 and 21 extra
    messages for 10 queued jobs) only makes duplicates every worker must skip. Why
    "missing for a while" rather than "missing once": between a worker taking a
    message and claiming its job (a fresh child process starting) the message is in
    neither place for a few seconds. The state is this process's memory: each API
    replica judges on its own observations, and the database's conditional update lets
    only one of them re-publish.
    """

    def __init__(self, publisher, grace_s: float, *, held_for_s: float = 0.0, clock=time.monotonic):
        self.publisher, self.grace_s, self.clock = publisher, grace_s, clock
        #: how long a worker may hold a message before claiming its job
        self.held_for_s = held_for_s
        self.missing_since: dict[str, float] = {}

    def __call__(self, job_ids: list[str]) -> set[str]:
        try:
            waiting = waiting_job_ids(self.publisher, all_queues(), held_for_s=self.held_for_s)
        except Exception:  # noqa: BLE001 - broker down: nothing can be published anyway
            log.warning("could not read the broker's queues; no job re-published this pass")
            self.missing_since.clear()
            return set()
        if waiting is None:  # a broker we cannot read: by age alone
            return set(job_ids)
        now = self.clock()
        seen_before = self.missing_since
        missing = {job_id: seen_before.get(job_id, now) for job_id in job_ids}
        missing = {job_id: since for job_id, since in missing.items() if job_id not in waiting}
        lost = {
            job_id
            for job_id, since in missing.items()
            if job_id in seen_before and now - since >= self.grace_s
        }
        self.missing_since = {k: v for k, v in missing.items() if k not in lost}
        return lost


def reap_and_requeue(
    sessions, publisher, settings: Settings, lost_messages: LostMessages | None = None
) -> list[str]:
    with sessions() as session:
        job_ids = reap_stale_jobs(
            session,
            stale_after_s=settings.stale_after_s,
            requeue_queued_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
            time_limit_s=settings.job_time_limit_s,
            lost_messages=lost_messages,
        )
        session.commit()
        gpus = requested_gpus(session, job_ids)
        session.commit()
        for job_id in job_ids:
            if not enqueue_job(publisher, job_id, gpus.get(job_id, 1)):
                mark_enqueue_failed(session, job_id)
    if job_ids:
        log.info("reaper re-published %d job(s): %s", len(job_ids), ", ".join(job_ids))
    return job_ids


#: How often the reaper thread also runs the retention sweep (retention is in days).
RETENTION_SWEEP_INTERVAL_S = 3600.0


class ReaperThread(threading.Thread):
    def __init__(self, sessions, publisher, settings: Settings, store=None):
        super().__init__(name="obliviate-reaper", daemon=True)
        self.sessions, self.publisher, self.settings = sessions, publisher, settings
        #: where the retention sweep deletes shredded files (no sweep without it)
        self.store = store
        self.next_sweep = 0.0
        self.next_checkpoint = 0.0
        self._signing_key = None
        # A worker that holds a message longer than it may stay silent is dead.
        self.lost_messages = LostMessages(
            publisher, grace_s=settings.requeue_queued_after_s, held_for_s=settings.stale_after_s
        )
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.reaper_interval_s):
            try:
                reap_and_requeue(self.sessions, self.publisher, self.settings, self.lost_messages)
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("reaper pass failed")
            self.batch_if_due()
            self.sweep_if_due()
            self.checkpoint_if_due()

    def batch_if_due(self) -> list:
        """Serve the deletion batches whose window closed (every replica may: a batch
        becomes one job, ``core.deletion_batches``). Needs the object store: the union
        of a batch's records is a new dataset."""
        if self.store is None:
            return []
        try:
            with self.sessions() as session:
                return dispatch_due(session, self.store, self.settings, self.publisher)
        except Exception:  # noqa: BLE001 - try again next pass
            log.exception("deletion batching pass failed")
            return []

    def sweep_if_due(self) -> None:
        """Shred the forget sets whose retention ran out, at most once an interval."""
        if self.store is None or self.settings.forget_set_retention_days is None:
            return
        if time.monotonic() < self.next_sweep:
            return
        self.next_sweep = time.monotonic() + RETENTION_SWEEP_INTERVAL_S
        try:
            sweep_retention(
                self.sessions,
                self.store,
                self.settings.forget_set_retention_days,
                now=utcnow(),
            )
        except Exception:  # noqa: BLE001 - try again next interval
            log.exception("retention sweep failed")

    def checkpoint_if_due(self) -> list[int]:
        """Sign each tenant's audit chain head that moved, at most once an interval
        (every replica may: one checkpoint per head is kept). The new checkpoints' ids."""
        if self.settings.signing_key_file is None:
            return []
        if time.monotonic() < self.next_checkpoint:
            return []
        self.next_checkpoint = time.monotonic() + self.settings.audit_checkpoint_interval_s
        try:
            if self._signing_key is None:
                self._signing_key = load_or_create_private_key(self.settings.signing_key_file)
            return checkpoint_now(self.sessions, self._signing_key, utcnow())
        except Exception:  # noqa: BLE001 - try again next interval
            log.exception("audit checkpoint failed")
            return []

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
