"""``obliviate serve`` and ``obliviate worker``: the service processes.

``serve`` runs migrations, installs the demo (first start only; cached after), starts
one Celery worker process beside it (embedded mode: the broker is a folder, so no
other server is needed), and serves the API with uvicorn until interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from core.settings import Settings


def worker_command(*, concurrency: int = 1, loglevel: str = "INFO") -> list[str]:
    # prefork + max_tasks_per_child=1 (core.queue): each job runs in a fresh child.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        "obliviate",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--hostname",
        f"obliviate-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def start_worker(settings: Settings) -> subprocess.Popen:
    env = {
        **os.environ,
        "OBLIVIATE_HOME": str(settings.home),
        "OBLIVIATE_DATABASE_URL": settings.database_url,
        "OBLIVIATE_BROKER_URL": settings.broker_url,
        "OBLIVIATE_STORAGE_URL": settings.storage_url,
    }
    return subprocess.Popen(
        worker_command(), env=env, start_new_session=True, preexec_fn=_die_with_parent
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
