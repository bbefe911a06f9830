"""The reaper: no job stays ``running`` after its worker died, and no ``queued`` job is
lost with a broker message (the database is the source of truth; the broker only
carries messages).

It runs as a thread in every API process rather than as a Celery task: a task would
wait in the same queue behind the long training job it is meant to watch. Several API
replicas reaping at once is safe: every transition is a conditional UPDATE.
"""

from __future__ import annotations

import logging
import threading

from core.db.jobs import mark_enqueue_failed, reap_stale_jobs
from core.queue import enqueue_job
from core.settings import Settings

log = logging.getLogger(__name__)


def reap_and_requeue(sessions, publisher, settings: Settings) -> list[str]:
    with sessions() as session:
        job_ids = reap_stale_jobs(
            session,
            stale_after_s=settings.stale_after_s,
            requeue_queued_after_s=settings.requeue_queued_after_s,
            max_attempts=settings.max_attempts,
            time_limit_s=settings.job_time_limit_s,
        )
        session.commit()
        for job_id in job_ids:
            if not enqueue_job(publisher, job_id):
                mark_enqueue_failed(session, job_id)
    if job_ids:
        log.info("reaper re-published %d job(s): %s", len(job_ids), ", ".join(job_ids))
    return job_ids


class ReaperThread(threading.Thread):
    def __init__(self, sessions, publisher, settings: Settings):
        super().__init__(name="obliviate-reaper", daemon=True)
        self.sessions, self.publisher, self.settings = sessions, publisher, settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.reaper_interval_s):
            try:
                reap_and_requeue(self.sessions, self.publisher, self.settings)
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("reaper pass failed")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
