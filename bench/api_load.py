"""Load benchmark of the API: status reads and job submissions per second, p50/p99.

Starts everything it needs and removes it afterwards: a temporary Postgres database
(migrated), a Redis database number as broker (flushed before and after), a temporary
OBLIVIATE_HOME, and uvicorn with ``--workers N``. Seeds a dataset, a model and a few
hundred jobs, then drives closed-loop load over keep-alive connections with a small
asyncio HTTP/1.1 client (cheaper per request than httpx, so the load generator steals
less CPU from the server on a small machine; ``--client httpx`` to compare).

    python bench/api_load.py                     # 3 workers, 16 connections, 15 s/phase
    python bench/api_load.py --workers 2 --duration 20 --concurrency 64
    python bench/api_load.py --auth              # with a database API key (issue 9)

Not a test: it prints figures. Goal on 2 cores: >= 1,000 GET /v1/jobs/{id} per second
at p99 <= 50 ms, >= 300 POST /v1/jobs per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POSTGRES_ADMIN_URL = os.environ.get(
    "OBLIVIATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class PhaseResult:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def cpu_ms_per_request(self) -> dict[str, float]:
        count = max(len(self.latencies), 1)
        return {name: seconds * 1000 / count for name, seconds in self.cpu_seconds.items()}

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


# ------------------------------------------------------------------ the client


class RawHttpConnection:
    """One keep-alive HTTP/1.1 connection; just enough of the protocol for this bench."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
            return status, bytes(body)
        return status, await self.reader.readexactly(length) if length else b""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


#: sent with every request: the API key with --auth
AUTH_HEADERS: dict[str, str] = {}


def raw_request(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", "Connection: keep-alive"]
    for name, value in {**AUTH_HEADERS, **(headers or {})}.items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def drive_raw(
    host: str, port: int, concurrency: int, seconds: float, make: Callable[[], bytes]
) -> PhaseResult:
    result = PhaseResult(name="", seconds=seconds)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        connection = RawHttpConnection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status, _ = await connection.request(make())
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    await connection.close()
                    connection = RawHttpConnection(host, port)
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


async def drive_httpx(
    base_url: str, concurrency: int, seconds: float, make: Callable[[], tuple]
) -> PhaseResult:
    import httpx

    result = PhaseResult(name="", seconds=seconds)
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                method, path, body = make()
                started = time.perf_counter()
                try:
                    response = await client.request(
                        method,
                        path,
                        content=body,
                        headers={"content-type": "application/json", **AUTH_HEADERS},
                    )
                except httpx.HTTPError:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                code = response.status_code
                result.statuses[code] = result.statuses.get(code, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - began
    return result


# ------------------------------------------------------------------ CPU accounting
#
# On a shared 2-core machine req/s depends on what else runs; CPU time per request does
# not (much). So each phase also reports the CPU that the server, Postgres, Redis and
# this load generator spent per request, and the throughput 2 idle cores would allow.

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_snapshot(server_pid: int, database: str) -> dict[str, float]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    server, stack = 0.0, [server_pid]
    while stack:
        pid = stack.pop()
        server += stats.get(pid, (0, 0.0))[1]
        stack.extend(children.get(pid, []))
    postgres = redis = 0.0
    for pid, (_, seconds) in stats.items():
        command = _cmdline(pid)
        if command.startswith("postgres:") and f" {database} " in command:
            postgres += seconds  # the backends serving the bench database
        elif command.startswith("redis-server"):
            redis += seconds
    usage = os.times()
    return {
        "server": server,
        "postgres": postgres,
        "redis": redis,
        "client": usage.user + usage.system,
    }


# ------------------------------------------------------------ the environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_database() -> tuple[str, str]:
    import psycopg

    name = f"obliviate_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


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
    ]
    process = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    # Every worker must be up, not just the first to accept.
                    time.sleep(1.0 + 0.3 * args.workers)
                    return process
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the server did not become ready in 60 s")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def http_json(method: str, url: str, body: bytes | None = None, content_type="application/json"):
    request = urllib.request.Request(url, data=body, method=method, headers=AUTH_HEADERS)
    if body is not None:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def seed(base_url: str, jobs: int) -> tuple[dict, list[str]]:
    records = "\n".join(
        json.dumps({"question": f"Who wrote book {i}?", "answer": f"Author {i}."})
        for i in range(50)
    ).encode()
    boundary = uuid.uuid4().hex
    upload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="forget.jsonl"'
            f"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + records
        + f"\r\n--{boundary}--\r\n".encode()
    )
    dataset = http_json(
        "POST", f"{base_url}/v1/datasets", upload, f"multipart/form-data; boundary={boundary}"
    )
    http_json(
        "POST",
        f"{base_url}/v1/models",
        json.dumps({"name": "bench-base", "source": "org/bench-base"}).encode(),
    )
    body = {
        "model": "bench-base",
        "forget": dataset["id"],
        "method": "simnpo",
        "hyperparameters": {"retain_loss": "none", "learning_rate": 1e-5, "epochs": 5},
        "metadata": {"bench": "api_load"},
    }
    ids = [
        http_json("POST", f"{base_url}/v1/jobs", json.dumps(body).encode())["id"]
        for _ in range(jobs)
    ]
    return body, ids


# ----------------------------------------------------------------------- main


def run_phase(
    args, port: int, name: str, raw_maker, httpx_maker, seconds: float, cpu_probe=None
) -> PhaseResult:
    before = cpu_probe() if cpu_probe else {}
    if args.client == "httpx":
        coroutine = drive_httpx(f"http://127.0.0.1:{port}", args.concurrency, seconds, httpx_maker)
    else:
        coroutine = drive_raw("127.0.0.1", port, args.concurrency, seconds, raw_maker)
    result = run_async(coroutine)
    result.name = name
    if cpu_probe:
        after = cpu_probe()
        result.cpu_seconds = {key: after[key] - before[key] for key in after}
    return result


def run_async(coroutine):
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def report(results: list[PhaseResult], args) -> None:
    print()
    print(
        f"workers={args.workers} concurrency={args.concurrency} client={args.client} "
        f"cpus={os.cpu_count()} duration={args.duration}s per phase "
        f"load average before: {args.load_before}"
    )
    header = f"{'phase':<28}{'requests':>10}{'errors':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        bad = result.errors + sum(n for code, n in result.statuses.items() if code >= 400)
        print(
            f"{result.name:<28}{len(result.latencies):>10}{bad:>8}{result.rate:>10.0f}"
            f"{result.percentile(0.50):>9.1f}{result.percentile(0.99):>9.1f}"
        )
        if result.latencies:
            mean = statistics.fmean(result.latencies) * 1000
            print(f"{'':<28}statuses {dict(sorted(result.statuses.items()))}, mean {mean:.1f} ms")
        if result.cpu_seconds:
            per_request = result.cpu_ms_per_request()
            parts = ", ".join(f"{name} {ms:.2f}" for name, ms in per_request.items())
            total = sum(per_request.values())
            service = total - per_request["client"]
            print(
                f"{'':<28}CPU ms/request: {parts}; the service alone (no load generator) "
                f"fits {2000 / service:.0f} req/s on 2 idle cores"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="uvicorn worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="open connections")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--jobs", type=int, default=300, help="jobs seeded for the reads")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/14", help="broker (flushed before and after)"
    )
    parser.add_argument(
        "--phases", default="read,read-304,submit", help="comma-separated: read, read-304, submit"
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="send a submitter key made in the database (keys hashed, tenant-scoped)",
    )
    args = parser.parse_args()
    args.load_before = " ".join(f"{value:.1f}" for value in os.getloadavg())

    from core.db.migrate import upgrade

    database, database_url = create_database()
    home = Path(tempfile.mkdtemp(prefix="obliviate-bench-"))
    flush_redis(args.redis)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OBLIVIATE_HOME": str(home),
        "OBLIVIATE_DATABASE_URL": database_url,
        "OBLIVIATE_BROKER_URL": args.redis,
        "OBLIVIATE_STORAGE_URL": "",
        "OBLIVIATE_API_KEYS": "",
        "OBLIVIATE_DEMO_ON_START": "false",
    }
    server = None
    try:
        upgrade(database_url)
        if args.auth:
            AUTH_HEADERS["Authorization"] = f"Bearer {make_key(database_url)}"
        server = start_server(args, env, port)
        base_url = f"http://127.0.0.1:{port}"
        body, job_ids = seed(base_url, args.jobs)
        etags = {}
        for job_id in job_ids:
            request = urllib.request.Request(f"{base_url}/v1/jobs/{job_id}", headers=AUTH_HEADERS)
            with urllib.request.urlopen(request) as reply:
                etags[job_id] = reply.headers["ETag"]
        submit_bytes = json.dumps(body).encode()

        phases = {
            "read": (
                "GET /v1/jobs/{id}",
                lambda: raw_request("GET", f"/v1/jobs/{random.choice(job_ids)}"),
                lambda: ("GET", f"/v1/jobs/{random.choice(job_ids)}", None),
            ),
            "read-304": (
                "GET /v1/jobs/{id} (304)",
                lambda: _conditional_get(job_ids, etags),
                None,
            ),
            "submit": (
                "POST /v1/jobs",
                lambda: raw_request("POST", "/v1/jobs", submit_bytes),
                lambda: ("POST", "/v1/jobs", submit_bytes),
            ),
        }
        results = []
        for key in args.phases.split(","):
            name, raw_maker, httpx_maker = phases[key.strip()]
            if httpx_maker is None and args.client == "httpx":
                continue
            run_phase(args, port, name, raw_maker, httpx_maker, args.warmup)
            results.append(
                run_phase(
                    args,
                    port,
                    name,
                    raw_maker,
                    httpx_maker,
                    args.duration,
                    cpu_probe=lambda: cpu_snapshot(server.pid, database),
                )
            )
            print(f"{name}: {results[-1].rate:.0f} req/s", flush=True)
        report(results, args)
    finally:
        if server is not None:
            stop_server(server)
        flush_redis(args.redis)
        drop_database(database)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def make_key(database_url: str) -> str:
    from core.db import keys, make_engine, make_session_factory

    engine = make_engine(database_url, pool_size=1)
    try:
        with make_session_factory(engine)() as session:
            _, secret = keys.create_key(session, tenant="bench", role="submitter")
            session.commit()
    finally:
        engine.dispose()
    return secret


def _conditional_get(job_ids: list[str], etags: dict[str, str]) -> bytes:
    job_id = random.choice(job_ids)
    return raw_request("GET", f"/v1/jobs/{job_id}", headers={"If-None-Match": etags[job_id]})


if __name__ == "__main__":
    main()
