"""The Celery application both sides share, configured from settings.

The API only *sends* by task name (``send_task``), so importing this module loads no
task code and no torch. Tasks live in ``worker/tasks.py``. In embedded mode the broker
is kombu's filesystem transport: a folder under ``OBLIVIATE_HOME`` that the API writes
messages into and the worker reads from, so no broker server is needed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time

from celery import Celery

from core.settings import Settings, get_settings

RUN_JOB_TASK = "obliviate.run_job"
#: The queue of one-GPU jobs (the default), and the prefix of the others.
QUEUE = "obliviate"
#: The message header that names the job, read by the worker's pre-dispatch check and by
#: the reaper's scan of what is waiting in the broker.
JOB_ID_HEADER = "obliviate_job_id"

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


def queue_for(gpus: int) -> str:
    """The queue of jobs that ask for ``gpus`` GPUs. One-GPU jobs keep the queue's
    original name, so workers started before GPU routing existed (``-Q obliviate``)
    still serve them through a rolling upgrade."""
    return QUEUE if gpus == 1 else f"{QUEUE}.gpus-{gpus}"


def queues_served(gpus_per_job: int, *, accept_smaller: bool = False) -> list[str]:
    """The queues a worker whose slots have ``gpus_per_job`` devices listens on: its own
    size only, or (``accept_smaller``) every size up to it, at the price of a big slot
    sometimes running a small job while a big one waits."""
    sizes = range(1, gpus_per_job + 1) if accept_smaller else [gpus_per_job]
    return [queue_for(size) for size in sizes]


def all_queues() -> list[str]:
    """Every job queue, one per GPU count a job may ask for."""
    from core.spec import MAX_JOB_GPUS

    return [queue_for(gpus) for gpus in range(1, MAX_JOB_GPUS + 1)]


def enqueue_job(app: Celery, job_id: str, gpus: int = 1) -> bool:
    """Publish a run message carrying only the job id, to the queue for its GPU count.

    Returns False instead of raising when the broker is unreachable: the job row is
    already committed as ``queued`` and the reaper re-enqueues it later.
    """
    try:
        app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=queue_for(gpus),
            headers={JOB_ID_HEADER: job_id},
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )
        return True
    except Exception:  # noqa: BLE001 - any broker failure is recoverable by the reaper
        log.exception("could not enqueue job %s; the reaper will retry", job_id)
        return False


#: kombu's Redis transport keeps a queue's prioritised messages in sibling lists named
#: ``<queue>\x06\x16<priority>``; we publish without priorities, but a scan looks there
#: too rather than miss a message.
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)
_REDIS_SCAN_PAGE = 1000


def waiting_job_ids(app: Celery, queues: list[str], *, held_for_s: float = 0.0) -> set[str] | None:
    """The ids of the jobs whose run message is still alive in the broker: waiting in
    one of ``queues``, or (Redis) taken by a worker less than ``held_for_s`` ago and not
    yet acknowledged. None for a broker whose contents this cannot read (the reaper
    then falls back to re-publishing by age alone). Raises when the broker is
    unreachable.

    Redis: the queues' lists, plus kombu's ``unacked`` hash for deliveries younger than
    ``held_for_s`` (a worker's parent holds a message while a fresh child starts, which
    takes seconds; an older delivery whose job is still queued belongs to a worker that
    died before claiming it, and kombu would give it back only after the visibility
    timeout, a day). Delivery times are the worker host's clock. Filesystem transport:
    the queue folder's files (a delivered message leaves the folder).
    """
    transport = app.conf.broker_url.split("://", 1)[0]
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        if transport in ("redis", "rediss"):
            return _redis_waiting(channel, queues, held_for_s)
        if transport == "filesystem":
            return _folder_waiting(channel.data_folder_in, queues)
    return None


def _redis_waiting(channel, queues: list[str], held_for_s: float) -> set[str]:
    client = channel.client
    keys = [
        key
        for queue in queues
        for key in (
            queue,
            *(f"{queue}{_REDIS_PRIORITY_SEPARATOR}{p}" for p in _REDIS_PRIORITY_STEPS),
        )
    ]
    found: set[str] = set()
    for key in keys:
        start = 0
        while True:
            page = client.lrange(key, start, start + _REDIS_SCAN_PAGE - 1)
            found.update(filter(None, map(_job_id_of, page)))
            if len(page) < _REDIS_SCAN_PAGE:
                break
            start += _REDIS_SCAN_PAGE
    if held_for_s > 0:
        recent = client.zrangebyscore(channel.unacked_index_key, time.time() - held_for_s, "+inf")
        for delivery in client.hmget(channel.unacked_key, recent) if recent else ():
            if delivery:
                message = json.loads(delivery)[0]  # [message, exchange, routing key]
                found.update(filter(None, [_job_id_of(message)]))
    return found


def _folder_waiting(folder: str, queues: list[str]) -> set[str]:
    suffixes = tuple(f".{queue}.msg" for queue in queues)
    found: set[str] = set()
    for name in os.listdir(folder):
        if not name.endswith(suffixes):
            continue
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                job_id = _job_id_of(handle.read())
        except OSError:  # delivered (moved away) meanwhile
            continue
        if job_id:
            found.add(job_id)
    return found


def _job_id_of(raw: bytes | str | dict) -> str | None:
    """The job a (serialized) kombu message runs: our header, or (messages published
    before it existed) the task's first argument."""
    try:
        message = raw if isinstance(raw, dict) else json.loads(raw)
        headers = message.get("headers") or {}
        if headers.get("task") != RUN_JOB_TASK:
            return None
        if headers.get(JOB_ID_HEADER):
            return headers[JOB_ID_HEADER]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
