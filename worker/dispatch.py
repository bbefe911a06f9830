"""Skip run messages whose job is not ``queued`` before paying for a worker process.

Each job runs in a fresh child (prefork, ``max_tasks_per_child=1``), so every message
the pool executes costs a process start, a second or more, before the child's claim
finds the job taken and returns. Duplicates are normal (a redelivery after a crash, a
re-publish by the reaper, a message restored after a visibility timeout), and 20 of
them once delayed the next real job by about 50 s on 2 cores. So the worker's parent
process looks the job up as the message arrives and acknowledges, without executing,
a message whose job is running, finished or unknown.

It is a Celery task *strategy* (``Task.Strategy``): the function that turns an arriving
message into a request for the pool; this one wraps Celery's default. The look-up is
one primary-key read on a connection of its own (``NullPool``: nothing stays open in
the parent for a forked child to inherit). The child's conditional claim stays the
guarantee; this check only saves the process. When the database cannot answer, the
message goes to the pool as before.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery.worker.strategy import default as default_strategy

from core.db.engine import make_engine, make_session_factory
from core.db.jobs import get_job_status
from core.errors import NotFound
from core.queue import JOB_ID_HEADER
from core.settings import get_settings

log = logging.getLogger(__name__)


def skip_unless_queued(task, app, consumer, **kwargs):
    handle = default_strategy(task, app, consumer, **kwargs)
    connection_errors = consumer.connection_errors

    def on_message(message, body, ack, reject, callbacks, **options):
        job_id = job_id_of(message)
        status = status_of(job_id) if job_id else "queued"
        if status != "queued":
            log.info(
                "skipping a run message for job %s: it is %s (duplicate or stale message)",
                job_id,
                status or "unknown",
                extra={"job_id": job_id, "status": status},
            )
            ack(log, connection_errors)  # what Request.acknowledge passes
            return None
        return handle(message, body, ack, reject, callbacks, **options)

    return on_message


def job_id_of(message) -> str | None:
    headers = message.headers or {}
    if headers.get(JOB_ID_HEADER):
        return headers[JOB_ID_HEADER]
    try:  # a message published before the header existed: the task's first argument
        args = message.decode()[0]
        return args[0] if args and isinstance(args[0], str) else None
    except Exception:  # noqa: BLE001 - not ours to judge; the pool will
        return None


def status_of(job_id: str) -> str | None:
    """The job's status; None when there is no such job; ``queued`` when the database
    cannot be asked (let the child try, as it would have without this check)."""
    try:
        with _sessions()() as session:
            return get_job_status(session, job_id)
    except NotFound:
        return None
    except Exception:  # noqa: BLE001 - the child's claim decides
        log.warning("could not look up job %s before dispatch", job_id, exc_info=True)
        return "queued"


@lru_cache
def _sessions():
    return make_session_factory(make_engine(get_settings().database_url, pooled=False))
