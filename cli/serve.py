"""``obliviate serve`` and ``obliviate worker``: the service processes.

``serve`` runs migrations, installs the demo (first start only; cached after), starts
one Celery worker process beside it (embedded mode: the broker is a folder, so no
other server is needed) and the model-serving process (``obliviate inference``), and
serves the API with uvicorn until interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from core.settings import Settings, get_settings


def worker_command(
    settings: Settings | None = None,
    *,
    concurrency: int = 1,
    queues: list[str] | None = None,
    loglevel: str | None = None,
) -> list[str]:
    """The Celery worker command line. With ``settings.worker_gpus`` the worker runs one
    child per GPU slot (``worker.devices`` pins each) and listens on the queue of its
    slot size (and the smaller ones with ``worker_accept_smaller``); otherwise
    ``concurrency`` children and the one-GPU queue, or ``queues`` when given. The
    settings reach the children through the environment (``worker_environment``)."""
    from core.queue import queues_served

    settings = settings or get_settings()
    if settings.worker_gpus:
        concurrency = len(settings.worker_gpu_slots)
    if queues is None:
        queues = queues_served(
            settings.worker_gpus_per_job, accept_smaller=settings.worker_accept_smaller
        )
    # prefork + max_tasks_per_child=1 (core.queue): each job runs in a fresh child.
    return [
        sys.executable,
        "-m",
        "celery",
        # No start-up banner in JSON mode: every line on stderr is then one JSON object.
        *(["--quiet"] if settings.log_format == "json" else []),
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel or settings.log_level,
        "--hostname",
        f"obliviate-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def worker_environment(settings: Settings) -> dict[str, str]:
    """What a worker process needs to see the same settings as this one."""
    return {
        **os.environ,
        "OBLIVIATE_HOME": str(settings.home),
        "OBLIVIATE_DATABASE_URL": settings.database_url,
        "OBLIVIATE_BROKER_URL": settings.broker_url,
        "OBLIVIATE_STORAGE_URL": settings.storage_url,
        "OBLIVIATE_WORKER_GPUS": ",".join(settings.worker_gpus),
        "OBLIVIATE_WORKER_GPUS_PER_JOB": str(settings.worker_gpus_per_job),
        "OBLIVIATE_WORKER_ACCEPT_SMALLER": str(settings.worker_accept_smaller).lower(),
        "OBLIVIATE_LOG_FORMAT": settings.log_format,
        "OBLIVIATE_LOG_LEVEL": settings.log_level,
    }


def start_worker(settings: Settings) -> subprocess.Popen:
    """The embedded worker beside ``serve``: one machine, so it takes jobs of every size
    (on a machine without GPUs they all run on the CPU anyway)."""
    from core.queue import all_queues

    command = worker_command(settings, queues=None if settings.worker_gpus else all_queues())
    return subprocess.Popen(
        command,
        env=worker_environment(settings),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def start_inference(settings: Settings, port: int) -> subprocess.Popen:
    """The model-serving process beside ``serve``, on loopback: the API forwards
    ``/openai/v1`` to it."""
    command = [sys.executable, "-m", "cli.main", "inference", "--port", str(port)]
    return subprocess.Popen(
        command,
        env=worker_environment(settings),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when `serve` dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def exit_on_sigterm() -> None:
    """uvicorn re-raises the SIGTERM it handled once it has shut down; turning it into
    SystemExit lets ``serve`` stop its worker on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def stop_worker(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # warm shutdown: the running job gets to finish its step
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
