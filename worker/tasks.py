"""The Celery task. Thin: the work is in :mod:`worker.runner`.

torch is imported inside the runner when a job starts, never at worker import time.
"""

from __future__ import annotations

import logging

from celery import shared_task

from core.queue import RUN_JOB_TASK

log = logging.getLogger(__name__)


@shared_task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> None:
    from worker.runner import JobRunner

    JobRunner.from_settings().run(job_id)
