"""The Celery application both sides share, configured from settings.

The API only *sends* by task name (``send_task``), so importing this module loads no
task code and no torch. Tasks live in ``worker/tasks.py``. In embedded mode the broker
is kombu's filesystem transport: a folder under ``OBLIVIATE_HOME`` that the API writes
messages into and the worker reads from, so no broker server is needed.
"""

from __future__ import annotations

import logging

from celery import Celery

from core.settings import Settings, get_settings

RUN_JOB_TASK = "obliviate.run_job"
QUEUE = "obliviate"

log = logging.getLogger(__name__)


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("obliviate", broker=settings.broker_url, set_as_current=False)
    transport_options: dict = {}
    if settings.is_embedded_broker:
        queue_dir = settings.broker_folder / "queue"
        control_dir = settings.broker_folder / "control"
        for folder in (queue_dir, control_dir):
            folder.mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(control_dir),
            "store_processed": False,
        }
    else:
        # Redis re-delivers an unacknowledged message after the visibility timeout; it
        # must outlast the longest job or a running job would be delivered again.
        transport_options = {"visibility_timeout": settings.job_time_limit_s + 3600}
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=max(settings.job_time_limit_s - 60, 1),
        task_ignore_result=True,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # A fresh process per job: GPU memory is fully returned, and a crash or a hard
        # time limit kills only that child (the message is then re-delivered).
        worker_max_tasks_per_child=1,
    )
    return app


def enqueue_job(app: Celery, job_id: str) -> bool:
    """Publish a run message carrying only the job id.

    Returns False instead of raising when the broker is unreachable: the job row is
    already committed as ``queued`` and the reaper re-enqueues it later.
    """
    try:
        app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=QUEUE,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )
        return True
    except Exception:  # noqa: BLE001 - any broker failure is recoverable by the reaper
        log.exception("could not enqueue job %s; the reaper will retry", job_id)
        return False
