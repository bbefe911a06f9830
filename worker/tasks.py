"""The Celery task. Thin: the work is in :mod:`worker.runner`.

torch is imported inside the runner when a job starts, never at worker import time.
Messages whose job is not queued are dropped before they reach a child process
(:mod:`worker.dispatch`).
"""

from __future__ import annotations

import logging

from celery import shared_task

from core.logs import bind
from core.queue import RUN_JOB_TASK

log = logging.getLogger(__name__)


@shared_task(
    name=RUN_JOB_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    Strategy="worker.dispatch:skip_unless_queued",
)
def run_job(job_id: str) -> None:
    from worker.devices import worker_identity
    from worker.runner import JobRunner

    bind(job_id=job_id, attempt=None)
    status = JobRunner.from_settings(worker_id=worker_identity()).run(job_id)
    if status is not None:
        log.info("job ended %s", status, extra={"status": status})
