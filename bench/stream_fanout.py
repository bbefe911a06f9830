"""Live-stream benchmark: many SSE subscribers held by one API process while jobs
report progress, with the latency from a row's commit to its arrival at each subscriber.

Starts what it needs and removes it afterwards: a temporary Postgres database
(migrated), a temporary OBLIVIATE_HOME, and one uvicorn process (``--workers``: one
stream poller each). Seeds ``--jobs`` running jobs; a writer thread then plays their
workers: every ``--interval`` seconds each job records a heartbeat (progress) and one
metric row stamped with the wall-clock time just before its commit. Subscribers are
raw asyncio connections (cheaper than an HTTP library, so the load generator steals less
CPU from the server on a small machine): ``--subscribers`` on ``GET /v1/jobs/{id}/stream``
spread evenly over the jobs, plus ``--wide`` on the job-wide ``GET /v1/jobs/stream``.
Latency is measured on every metric event every subscriber receives.

    python bench/stream_fanout.py                          # 1,000 subscribers, 100 jobs
    python bench/stream_fanout.py --subscribers 2000 --interval 0.5

Not a test: it prints figures. Goal on 2 cores: 1,000 subscribers at p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POSTGRES_ADMIN_URL = os.environ.get(
    "OBLIVIATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SENT = re.compile(rb'"sent":([0-9.]+)')


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.messages = 0
        self.connected = 0
        self.ended = 0
        self.measuring = False


async def subscribe(host: str, port: int, path: str, tally: Tally, stop: asyncio.Event) -> None:
    """One SSE connection: count messages, time the metric rows."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise RuntimeError(f"{path}: {head[:200]!r}")
    tally.connected += 1
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                tally.ended += 1
                return
            if line.startswith(b"data:"):
                tally.messages += tally.measuring
                found = SENT.search(line)
                if found and tally.measuring:
                    tally.latencies.append(time.time() - float(found.group(1)))
    finally:
        writer.close()


def write_progress(database_url: str, job_ids: list[str], interval: float, stop) -> None:
    """Play the workers: per round, every job's progress (one UPDATE, as heartbeats do)
    and one metric row each, stamped just before the commit."""
    from sqlalchemy import update

    from core.db import make_engine, make_session_factory
    from core.db.jobs import claim_job
    from core.db.tables import Job, JobMetric
    from core.db.types import utcnow

    engine = make_engine(database_url, pool_size=2)
    sessions = make_session_factory(engine)
    with sessions() as session:
        for job_id in job_ids:
            claim_job(session, job_id, "bench-worker")
    step = 0
    next_round = time.monotonic()
    while not stop.is_set():
        step += 1
        with sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id.in_(job_ids))
                .values(step=step, total_steps=10**6, updated_at=utcnow())
            )
            session.commit()
            rows = [
                {
                    "job_id": job_id,
                    "step": step,
                    "epoch": step / 100,
                    "created_at": utcnow(),
                    "values": {"loss": 1.0 / step, "sent": time.time()},
                }
                for job_id in job_ids
            ]
            session.execute(JobMetric.__table__.insert(), rows)  # one statement, as a batch is
            session.commit()
        next_round += interval
        stop.wait(max(0.0, next_round - time.monotonic()))
    engine.dispose()


def seed(database_url: str, jobs: int) -> list[str]:
    from core.db import make_engine, make_session_factory
    from core.db.datasets import create_dataset
    from core.db.jobs import create_job
    from core.spec import parse_job_spec

    engine = make_engine(database_url, pool_size=1)
    with make_session_factory(engine)() as session:
        dataset_id = "ds_01benchbenchbenchbenchbenc"
        create_dataset(
            session,
            dataset_id=dataset_id,
            name="forget",
            filename="forget.jsonl",
            format="jsonl",
            kind="qa",
            record_count=1,
            size_bytes=1,
            sha256="0" * 64,
            storage_key="datasets/forget.jsonl",
            columns=["answer", "question"],
            has_truth_ratio_fields=False,
        )
        spec = parse_job_spec(
            {
                "model": "demo-target",
                "forget": dataset_id,
                "method": "npo",
                "hyperparameters": {"retain_loss": "none"},
            }
        )
        ids = [create_job(session, spec, dataset_id).id for _ in range(jobs)]
        session.commit()
    engine.dispose()
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, env: dict[str, str], port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--backlog",
        "4096",
        "--timeout-graceful-shutdown",
        "3",
    ]
    process = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                time.sleep(1.0)
                return process
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the server did not start in 60 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the server process group (uvicorn and its workers)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # the process group
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def run(args, port: int, job_ids: list[str], database_url: str) -> dict:
    tally, stop = Tally(), asyncio.Event()
    paths = [f"/v1/jobs/{job_ids[i % len(job_ids)]}/stream" for i in range(args.subscribers)]
    paths += ["/v1/jobs/stream?types=metric&types=job"] * args.wide
    connect_started = time.monotonic()
    tasks = []
    for start in range(0, len(paths), 100):  # in waves, as a crowd of dashboards would
        for path in paths[start : start + 100]:
            tasks.append(asyncio.create_task(subscribe("127.0.0.1", port, path, tally, stop)))
        await asyncio.sleep(0.05)
    while tally.connected < len(paths) and time.monotonic() - connect_started < 120:
        await asyncio.sleep(0.1)
    connect_seconds = time.monotonic() - connect_started

    # A process of its own: a writer thread would share the client's interpreter lock
    # and delay both the writes and the reads being timed.
    context = multiprocessing.get_context("spawn")
    writer_stop = context.Event()
    writer = context.Process(
        target=write_progress, args=(database_url, job_ids, args.interval, writer_stop)
    )
    writer.start()
    await asyncio.sleep(args.warmup)
    server_cpu = cpu_seconds(args.server_pid)
    tally.measuring = True
    measure_started = time.monotonic()
    await asyncio.sleep(args.duration)
    tally.measuring = False
    elapsed = time.monotonic() - measure_started
    server_cpu = cpu_seconds(args.server_pid) - server_cpu
    writer_stop.set()
    writer.join()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    latencies = sorted(tally.latencies)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "subscribers": len(paths),
        "connected": tally.connected,
        "streams_ended_early": tally.ended,
        "connect_seconds": round(connect_seconds, 2),
        "jobs": len(job_ids),
        "writes_per_second": round(len(job_ids) / args.interval, 1),
        "messages_per_second": round(tally.messages / elapsed, 1),
        "latency_samples": len(latencies),
        "latency_ms": {
            "p50": round(pct(0.50), 1),
            "p90": round(pct(0.90), 1),
            "p99": round(pct(0.99), 1),
            "max": round(latencies[-1] * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
        }
        if latencies
        else None,
        "server_cpu_percent": round(100 * server_cpu / elapsed, 1),
        "poll_interval_s": args.poll_interval,
        "load_before": args.load_before,
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000, help="per-job streams")
    parser.add_argument("--wide", type=int, default=10, help="job-wide streams")
    parser.add_argument("--jobs", type=int, default=100, help="running jobs writing progress")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between writes")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--poll-interval", type=float, default=0.25, help="hub poll interval")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    args.load_before = " ".join(f"{value:.1f}" for value in os.getloadavg())

    import psycopg

    from core.db.migrate import upgrade

    name = f"obliviate_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    database_url = f"{base}/{name}"
    home = Path(tempfile.mkdtemp(prefix="obliviate-bench-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OBLIVIATE_HOME": str(home),
        "OBLIVIATE_DATABASE_URL": database_url,
        "OBLIVIATE_API_KEYS": "",
        "OBLIVIATE_DEMO_ON_START": "false",
        "OBLIVIATE_STREAM_POLL_INTERVAL_S": str(args.poll_interval),
    }
    server = None
    try:
        upgrade(database_url)
        job_ids = seed(database_url, args.jobs)
        port = free_port()
        server = start_server(args, env, port)
        args.server_pid = server.pid
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        figures = asyncio.run(run(args, port, job_ids, database_url))
        print(json.dumps(figures, indent=2))
        if args.out:
            args.out.write_text(json.dumps(figures, indent=2))
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import shutil

        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
