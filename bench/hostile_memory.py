"""Memory of the API process under the expansion bombs of issue 14, and what the
model loader leaves on disk after an archive bomb.

For each bomb it starts a fresh API process (uvicorn, embedded settings: SQLite and a
local store under a temporary OBLIVIATE_HOME; the parsing is the same on the
production stack), uploads the bomb, and reads the process's resident memory before
and its peak (VmHWM) after from /proc. The archive bomb is handed to the loader
(``fetch_model``) in a child process, whose peak memory and leftover cache are read
the same way.

    python bench/hostile_memory.py                      # this checkout
    python bench/hostile_memory.py --code /path/to/an/older/checkout

``--code`` runs another checkout's code (put first on PYTHONPATH) with this script's
bombs: how the figures in the README were taken before and after the limits. Not a
test: it prints figures (the hostile-input tests check a loose bound).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def code_env(code: Path, home: Path, **settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBLIVIATE_")}
    env.update(
        PYTHONPATH=str(code),
        OBLIVIATE_HOME=str(home),
        OBLIVIATE_DEMO_ON_START="false",
        OMP_NUM_THREADS="1",
        **{f"OBLIVIATE_{k.upper()}": str(v) for k, v in settings.items()},
    )
    return env


def parquet_bomb(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 200_000
    table = pa.table(
        {
            "question": pa.array([f"Who wrote book {i % 997}?" for i in range(rows)]),
            "answer": pa.array(["x" * 11_000] * rows),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return path


def long_line_csv(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.write(b"question,answer\nWho?,")
        for _ in range(100):
            handle.write(b"a" * MIB)
        handle.write(b"\n")
    return path


def tar_gz_bomb(path: Path) -> Path:
    with gzip.open(path, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        config = b'{"model_type": "llama"}'
        info = tarfile.TarInfo("config.json")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
        info = tarfile.TarInfo("model.safetensors")
        info.size = 1100 * MIB
        tar.addfile(info, Zeros(info.size))
    return path


class Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def upload(code: Path, bomb: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="obliviate-bench-") as home:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=code_env(code, Path(home)),
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            before = status_mib(process.pid, "VmRSS")
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")
            started = time.monotonic()
            status, body = post_file(port, bomb)
            seconds = time.monotonic() - started
            peak = status_mib(process.pid, "VmHWM")
            after = status_mib(process.pid, "VmRSS")
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {
        "bomb": bomb.name,
        "bytes": bomb.stat().st_size,
        "status": status,
        "code": (body.get("error") or {}).get("code") if isinstance(body, dict) else None,
        "rss_before_mib": round(before),
        "peak_mib": round(peak),
        "held_after_mib": round(after),
        "peak_growth_mib": round(peak - before),
        "seconds": round(seconds, 1),
    }


def post_file(port: int, path: Path) -> tuple[int, dict]:
    import httpx

    with open(path, "rb") as handle, httpx.Client(timeout=600) as client:
        response = client.post(
            f"http://127.0.0.1:{port}/v1/datasets", files={"file": (path.name, handle)}
        )
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}


LOADER = """
import json, sys
from pathlib import Path
from core.models.loading import fetch_model
from core.settings import Settings
settings = Settings(_env_file=None, allow_private_urls=True, demo_on_start=False,
                    **json.loads(sys.argv[2]))
try:
    fetch_model(sys.argv[1], settings)
    outcome = "fetched"
except Exception as exc:
    outcome = getattr(exc, "code", type(exc).__name__)
cache = settings.home / "cache" / "models"
left = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
status = Path("/proc/self/status").read_text()
peak = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "cache_left_mib": round(left / 2**20),
                  "loader_peak_mib": round(peak / 1024)}))
"""


def load_archive(code: Path, bomb: Path, max_model_bytes: int | None) -> dict:
    folder = bomb.parent
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(folder))
    )
    server.handle_error = lambda *args: None  # the loader hanging up early is the point
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{bomb.name}"
    overrides = {"max_model_bytes": max_model_bytes} if max_model_bytes else {}
    try:
        with tempfile.TemporaryDirectory(prefix="obliviate-bench-") as home:
            output = subprocess.run(
                [sys.executable, "-c", LOADER, url, json.dumps({"home": home, **overrides})],
                env=code_env(code, Path(home)),
                cwd=home,  # not this checkout: `python -c` puts the cwd first on sys.path
                capture_output=True,
                text=True,
                check=True,
            ).stdout
    finally:
        server.shutdown()
    return {"bomb": bomb.name, "bytes": bomb.stat().st_size, **json.loads(output.splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose code runs")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="obliviate-bombs-") as scratch:
        scratch = Path(scratch)
        for bomb in (parquet_bomb(scratch / "bomb.parquet"), long_line_csv(scratch / "line.csv")):
            result = upload(args.code.resolve(), bomb)
            print(json.dumps(result), flush=True)
            results.append(result)
        (scratch / "archives").mkdir()
        archive = tar_gz_bomb(scratch / "archives" / "bomb.tar.gz")
        # The limit the hostile-input test uses; an older checkout has no such setting.
        result = load_archive(args.code.resolve(), archive, 64 * MIB)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps({"code": str(args.code), "results": results}, indent=1))


if __name__ == "__main__":
    main()
