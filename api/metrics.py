"""Prometheus metrics: request counts and latency by route template (``/v1/jobs/{job_id}``,
never the raw path, so cardinality stays bounded), and jobs by status, counted from the
database when scraped.

Under several uvicorn workers set ``PROMETHEUS_MULTIPROC_DIR`` (an empty folder) so the
request metrics of all workers are summed at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "obliviate_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "obliviate_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self, count_jobs: Callable[[], dict[str, int]]) -> bytes:
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            MultiProcessCollector(registry)
            output = generate_latest(registry)
        else:
            output = generate_latest(self.registry)
        return output + generate_latest(_JobsByStatus(count_jobs))


class _JobsByStatus:
    """A collector that queries at scrape time, so the gauge is never stale."""

    def __init__(self, count_jobs: Callable[[], dict[str, int]]):
        self.count_jobs = count_jobs

    def collect(self):
        gauge = GaugeMetricFamily("obliviate_jobs", "Jobs by status.", labels=["status"])
        for status, count in self.count_jobs().items():
            gauge.add_metric([status], count)
        yield gauge


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): adds a few microseconds per request."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - started)
