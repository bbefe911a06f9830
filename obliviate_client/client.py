"""``Client`` and ``AsyncClient``: the API over httpx, with its objects as typed models.

    from obliviate_client import Client

    client = Client()                       # OBLIVIATE_URL, OBLIVIATE_API_KEY
    job = client.jobs.create(spec)
    job = client.jobs.wait(job.id, on_update=print)     # follows the live stream
    client.jobs.download(job.id, "ckpt/")

Retries: answers 429 and 5xx, and connections that failed, are retried with backoff
(``Retry-After`` when the server sends one). Creates carry an ``Idempotency-Key`` (made
up when not given), so a retried create returns the first result, never a second job.
Lists are iterators that page on by themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from obliviate_client import calls
from obliviate_client.calls import Call
from obliviate_client.errors import ApiError
from obliviate_client.models import (
    TERMINAL_STATUSES,
    ApiKey,
    AuditCheckpoint,
    AuditEntry,
    ChainCheck,
    Checkpoint,
    Dataset,
    DeletionBatch,
    DeletionRequest,
    Evaluation,
    Event,
    Job,
    Method,
    Metric,
    Model,
    Page,
    StreamMessage,
    Webhook,
    WebhookDelivery,
)
from obliviate_client.sse import aiter_sse, iter_sse

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: stream messages that carry an API object, and the model each parses into
STREAM_MODELS: dict[str, Callable[[Any], Any]] = {
    "job": Job.model_validate,
    "event": Event.model_validate,
    "metric": Metric.model_validate,
    "evaluation": Evaluation.model_validate,
}


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = (base_url or os.environ.get("OBLIVIATE_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("OBLIVIATE_API_KEY")
    headers = {"User-Agent": "obliviate-client/0.1"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return url, headers


def _retry_delay(attempt: int, response: httpx.Response | None, backoff: float) -> float:
    if response is not None:
        after = response.headers.get("Retry-After", "")
        if after.replace(".", "", 1).isdigit():
            return min(float(after), 60.0)
    return min(backoff * 2**attempt, 8.0)


def _parse(call: Call, response: httpx.Response) -> Any:
    body = response.json() if response.content else None
    if call.parse is None:
        return body
    validate = getattr(call.parse, "model_validate", call.parse)
    if call.page:
        return Page[Any](
            data=[validate(item) for item in body["data"]],
            has_more=body.get("has_more", False),
            last_id=body.get("last_id", body.get("last_step")),
        )
    return validate(body)


def _stream_message(event) -> StreamMessage:
    import json

    data = json.loads(event.data) if event.data else None
    parse = STREAM_MODELS.get(event.event)
    return StreamMessage(kind=event.event, id=event.id, data=parse(data) if parse else data)


def _verify(path: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ApiError(0, "checksum_mismatch", f"{path}: sha256 does not match the manifest")


# ======================================================================== sync


class Client:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        http: httpx.Client | None = None,
    ):
        url, headers = _settings(base_url, api_key)
        self.base_url = url
        self.max_retries, self.backoff = max_retries, backoff
        self._http = http or httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.jobs = Jobs(self)
        self.datasets = Datasets(self)
        self.models = Models(self)
        self.methods = Methods(self)
        self.deletion_requests = DeletionRequests(self)
        self.audit = Audit(self)
        self.webhooks = Webhooks(self)
        self.keys = Keys(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, call: Call) -> httpx.Response:
        """Send ``call``, retrying what is safe to retry; raise ApiError on a 4xx/5xx."""
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    files=call.files,
                    data=call.data,
                    headers=call.headers,
                )
            except httpx.TransportError:
                if last or not call.retry:
                    raise
                time.sleep(_retry_delay(attempt, None, self.backoff))
                continue
            # 429 means "not processed": safe to repeat even for a non-keyed write.
            retryable = call.retry or response.status_code == 429
            if response.status_code in RETRY_STATUSES and retryable and not last:
                time.sleep(_retry_delay(attempt, response, self.backoff))
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response
        raise AssertionError("unreachable")

    def call(self, call: Call) -> Any:
        return _parse(call, self.request(call))

    def paginate(self, make: Callable[[Any], Call]) -> Iterator[Any]:
        """Every item of a list, page after page: ``make(cursor)`` builds each call."""
        cursor = None
        while True:
            page = self.call(make(cursor))
            yield from page.data
            if not page.has_more or page.last_id is None:
                return
            cursor = page.last_id

    def stream(self, path: str, *, last_event_id: str | None = None) -> Iterator[StreamMessage]:
        """A live stream's messages, reconnecting from the last position when the
        connection drops, until the server ends it."""
        position, failures = last_event_id, 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if position:
                headers["Last-Event-ID"] = position
            try:
                with self._http.stream(
                    "GET", path, headers=headers, timeout=httpx.Timeout(60, connect=10)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError.from_response(response)
                    failures = 0
                    for event in iter_sse(response.iter_lines()):
                        position = event.id or position
                        yield _stream_message(event)
                return  # the server ended the stream
            except httpx.TransportError:
                failures += 1
                if failures > self.max_retries:
                    raise
                time.sleep(_retry_delay(failures - 1, None, self.backoff))


class Jobs:
    def __init__(self, client: Client):
        self._client = client

    def create(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        return self._client.call(calls.create_job(spec, idempotency_key))

    def get(self, job_id: str) -> Job:
        return self._client.call(calls.get_job(job_id))

    def list(
        self,
        *,
        status: list[str] | None = None,
        method: str | None = None,
        metadata: Mapping[str, str] | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Newest first, every page."""
        return self._client.paginate(
            lambda after: calls.list_jobs(
                status=status, method=method, metadata=metadata, after=after, limit=page_size
            )
        )

    def cancel(self, job_id: str) -> Job:
        return self._client.call(calls.job_action(job_id, "cancel"))

    def pause(self, job_id: str) -> Job:
        return self._client.call(calls.job_action(job_id, "pause"))

    def resume(self, job_id: str) -> Job:
        return self._client.call(calls.job_action(job_id, "resume"))

    def events(self, job_id: str, *, after: int | None = None) -> Iterator[Event]:
        """Oldest first, after event id ``after``."""
        return self._client.paginate(
            lambda cursor: calls.list_events(
                job_id, after=after if cursor is None else cursor, limit=1000
            )
        )

    def metrics(self, job_id: str) -> Iterator[Metric]:
        return self._client.paginate(
            lambda cursor: calls.list_metrics(job_id, after_step=cursor, limit=1000)
        )

    def evaluations(self, job_id: str) -> Iterator[Evaluation]:
        """The evaluation points of the job's training run, oldest first."""
        return self._client.paginate(
            lambda cursor: calls.list_evaluations(job_id, after=cursor, limit=1000)
        )

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        return self._client.call(calls.list_checkpoints(job_id)).data

    def report(self, job_id: str) -> dict[str, Any]:
        return self._client.call(calls.get_report(job_id))

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[StreamMessage]:
        """The job live: its snapshot, its events and metrics, then every change until it
        ends."""
        return self._client.stream(f"/v1/jobs/{job_id}/stream", last_event_id=last_event_id)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[StreamMessage], None] | None = None,
    ) -> Job:
        """Follow the job's stream until it ends; returns its final state. ``on_update``
        sees every message (a progress bar, a log). TimeoutError after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = "unknown"
        for message in self.stream(job_id):
            if message.kind == "job":
                status = message.data.status
            if on_update is not None:
                on_update(message)
            if message.kind == "end":
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {status} after {timeout}s")
        job = self.get(job_id)
        if job.status not in TERMINAL_STATUSES:  # a server that ended the stream early
            return self.wait(job_id, timeout=timeout, on_update=on_update)
        return job

    def download(self, job_id: str, folder: str | Path, *, checkpoint: str = "final") -> list[Path]:
        """Every file of a checkpoint into ``folder`` (the ``save_pretrained`` layout),
        each checked against its sha256; returns the paths written."""
        chosen = _choose_checkpoint(self.checkpoints(job_id), job_id, checkpoint)
        written = []
        for entry in chosen.files:
            target = _inside(Path(folder), entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._client._http.stream("GET", entry.download_url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError.from_response(response)
                with open(target, "wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
            _verify(target, entry.sha256)
            written.append(target)
        return written


class Datasets:
    def __init__(self, client: Client):
        self._client = client

    def upload(self, path: str | Path, *, name: str | None = None) -> Dataset:
        return self._client.call(calls.upload_dataset(Path(path), name))

    def get(self, dataset_id: str) -> Dataset:
        return self._client.call(calls.get_dataset(dataset_id))

    def shred(self, dataset_id: str) -> Dataset:
        """Destroy the dataset's key and stored file (idempotent); see
        docs/data-retention.md."""
        return self._client.call(calls.shred_dataset(dataset_id))

    def list(self, *, page_size: int = 100) -> Iterator[Dataset]:
        return self._client.paginate(
            lambda after: calls.list_datasets(after=after, limit=page_size)
        )


class Models:
    def __init__(self, client: Client):
        self._client = client

    def list(self, *, page_size: int = 100) -> Iterator[Model]:
        return self._client.paginate(lambda after: calls.list_models(after=after, limit=page_size))

    def get(self, name: str) -> Model:
        return self._client.call(calls.get_model(name))

    def register(self, name: str, source: str, *, description: str | None = None) -> Model:
        return self._client.call(calls.register_model(name, source, description))


class Methods:
    def __init__(self, client: Client):
        self._client = client

    def list(self) -> list[Method]:
        """Every method a job may name; ``output`` says what it publishes (``guard``:
        a decoding-time guard, not new weights)."""
        return self._client.call(calls.list_methods()).data

    def get(self, name: str) -> Method:
        return self._client.call(calls.get_method(name))


class DeletionRequests:
    def __init__(self, client: Client):
        self._client = client

    def create(
        self,
        subject: str,
        *,
        description: str | None = None,
        external_ref: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        forget_dataset: str | None = None,
        model: str | None = None,
        job: Mapping[str, Any] | None = None,
    ) -> DeletionRequest:
        """With ``forget_dataset``, ``model`` and ``job`` (a job spec without model and
        forget; ``evaluation.holdout`` required) the service serves the request itself,
        batched with others for the same model and settings."""
        return self._client.call(
            calls.create_deletion_request(
                subject,
                description=description,
                external_ref=external_ref,
                metadata=metadata,
                idempotency_key=idempotency_key,
                forget_dataset=forget_dataset,
                model=model,
                job=job,
            )
        )

    def flush_batches(self) -> list[DeletionBatch]:
        """Serve the caller's open batches now (POST /v1/deletion-requests/batches/flush)."""
        return (self._client.call(calls.flush_deletion_batches())).data

    def get(self, request_id: str) -> DeletionRequest:
        return self._client.call(calls.get_deletion_request(request_id))

    def certificate(self, request_id: str) -> dict[str, Any]:
        """The signed forgetting certificate of a fulfilled request (409 before)."""
        return self._client.call(calls.get_certificate(request_id))

    def list(
        self, *, status: list[str] | None = None, page_size: int = 100
    ) -> Iterator[DeletionRequest]:
        return self._client.paginate(
            lambda after: calls.list_deletion_requests(status=status, after=after, limit=page_size)
        )


class Audit:
    def __init__(self, client: Client):
        self._client = client

    def list(
        self,
        *,
        object_id: str | None = None,
        action: str | None = None,
        principal: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[AuditEntry]:
        """Oldest first."""
        return self._client.paginate(
            lambda after: calls.list_audit(
                object_id=object_id,
                action=action,
                principal=principal,
                after=after,
                limit=page_size,
            )
        )

    def checkpoints(self, *, page_size: int = 1000) -> Iterator[AuditCheckpoint]:
        """The signed checkpoints of this key's tenant's audit chain head, oldest first."""
        return self._client.paginate(
            lambda after: calls.list_audit_checkpoints(after=after, limit=page_size)
        )

    def verify(self) -> ChainCheck:
        """The chain and every checkpoint, recomputed by the server."""
        return self._client.call(calls.verify_audit())


class Webhooks:
    def __init__(self, client: Client):
        self._client = client

    def create(self, url: str, events: list[str], *, description: str | None = None) -> Webhook:
        """The answer's ``secret`` signs every delivery; it is shown this once."""
        return self._client.call(calls.create_webhook(url, events, description=description))

    def get(self, webhook_id: str) -> Webhook:
        return self._client.call(calls.get_webhook(webhook_id))

    def list(self, *, page_size: int = 100) -> Iterator[Webhook]:
        return self._client.paginate(
            lambda after: calls.list_webhooks(after=after, limit=page_size)
        )

    def disable(self, webhook_id: str) -> Webhook:
        return self._client.call(calls.disable_webhook(webhook_id))

    def deliveries(self, webhook_id: str, *, page_size: int = 100) -> Iterator[WebhookDelivery]:
        """Newest first."""
        return self._client.paginate(
            lambda after: calls.list_webhook_deliveries(webhook_id, after=after, limit=page_size)
        )


class Keys:
    """The caller's tenant's API keys (an admin key's calls)."""

    def __init__(self, client: Client):
        self._client = client

    def create(self, role: str, *, name: str | None = None) -> ApiKey:
        """The answer's ``key`` is shown this once; the service keeps only its hash."""
        return self._client.call(calls.create_key(role, name=name))

    def list(self, *, page_size: int = 100) -> Iterator[ApiKey]:
        return self._client.paginate(lambda after: calls.list_keys(after=after, limit=page_size))

    def revoke(self, key_id: str) -> ApiKey:
        return self._client.call(calls.revoke_key(key_id))


def _choose_checkpoint(checkpoints: list[Checkpoint], job_id: str, wanted: str) -> Checkpoint:
    for checkpoint in checkpoints:
        if wanted in (checkpoint.name, checkpoint.id):
            return checkpoint
    names = ", ".join(c.name for c in checkpoints) or "none"
    raise ApiError(
        404, "checkpoint_not_found", f"job {job_id} has no checkpoint {wanted!r} ({names})"
    )


def _inside(folder: Path, relative: str) -> Path:
    """A manifest path under ``folder``, never outside it."""
    target = (folder / relative).resolve()
    if folder.resolve() not in target.parents:
        raise ApiError(0, "invalid_path", f"refusing to write outside {folder}: {relative}")
    return target


# ======================================================================== async


class AsyncClient:
    """The same API for asyncio: ``await client.jobs.create(...)``, ``async for``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        http: httpx.AsyncClient | None = None,
    ):
        url, headers = _settings(base_url, api_key)
        self.base_url = url
        self.max_retries, self.backoff = max_retries, backoff
        self._http = http or httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)
        self.jobs = AsyncJobs(self)
        self.datasets = AsyncDatasets(self)
        self.deletion_requests = AsyncDeletionRequests(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, call: Call) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    files=call.files,
                    data=call.data,
                    headers=call.headers,
                )
            except httpx.TransportError:
                if last or not call.retry:
                    raise
                await asyncio.sleep(_retry_delay(attempt, None, self.backoff))
                continue
            retryable = call.retry or response.status_code == 429
            if response.status_code in RETRY_STATUSES and retryable and not last:
                await asyncio.sleep(_retry_delay(attempt, response, self.backoff))
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response
        raise AssertionError("unreachable")

    async def call(self, call: Call) -> Any:
        return _parse(call, await self.request(call))

    async def paginate(self, make: Callable[[Any], Call]) -> AsyncIterator[Any]:
        cursor = None
        while True:
            page = await self.call(make(cursor))
            for item in page.data:
                yield item
            if not page.has_more or page.last_id is None:
                return
            cursor = page.last_id

    async def stream(
        self, path: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[StreamMessage]:
        position, failures = last_event_id, 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if position:
                headers["Last-Event-ID"] = position
            try:
                async with self._http.stream(
                    "GET", path, headers=headers, timeout=httpx.Timeout(60, connect=10)
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise ApiError.from_response(response)
                    failures = 0
                    async for event in aiter_sse(response.aiter_lines()):
                        position = event.id or position
                        yield _stream_message(event)
                return
            except httpx.TransportError:
                failures += 1
                if failures > self.max_retries:
                    raise
                await asyncio.sleep(_retry_delay(failures - 1, None, self.backoff))


class AsyncJobs:
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        return await self._client.call(calls.create_job(spec, idempotency_key))

    async def get(self, job_id: str) -> Job:
        return await self._client.call(calls.get_job(job_id))

    def list(
        self,
        *,
        status: list[str] | None = None,
        method: str | None = None,
        metadata: Mapping[str, str] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        return self._client.paginate(
            lambda after: calls.list_jobs(
                status=status, method=method, metadata=metadata, after=after, limit=page_size
            )
        )

    async def cancel(self, job_id: str) -> Job:
        return await self._client.call(calls.job_action(job_id, "cancel"))

    async def pause(self, job_id: str) -> Job:
        return await self._client.call(calls.job_action(job_id, "pause"))

    async def resume(self, job_id: str) -> Job:
        return await self._client.call(calls.job_action(job_id, "resume"))

    def events(self, job_id: str) -> AsyncIterator[Event]:
        return self._client.paginate(
            lambda cursor: calls.list_events(job_id, after=cursor, limit=1000)
        )

    def evaluations(self, job_id: str) -> AsyncIterator[Evaluation]:
        return self._client.paginate(
            lambda cursor: calls.list_evaluations(job_id, after=cursor, limit=1000)
        )

    async def report(self, job_id: str) -> dict[str, Any]:
        return await self._client.call(calls.get_report(job_id))

    def stream(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[StreamMessage]:
        return self._client.stream(f"/v1/jobs/{job_id}/stream", last_event_id=last_event_id)

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[StreamMessage], None] | None = None,
    ) -> Job:
        async def follow() -> None:
            async for message in self.stream(job_id):
                if on_update is not None:
                    on_update(message)
                if message.kind == "end":
                    return

        await asyncio.wait_for(follow(), timeout)
        return await self.get(job_id)


class AsyncDatasets:
    def __init__(self, client: AsyncClient):
        self._client = client

    async def upload(self, path: str | Path, *, name: str | None = None) -> Dataset:
        return await self._client.call(calls.upload_dataset(Path(path), name))


class AsyncDeletionRequests:
    def __init__(self, client: AsyncClient):
        self._client = client

    async def create(
        self,
        subject: str,
        *,
        description: str | None = None,
        external_ref: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        forget_dataset: str | None = None,
        model: str | None = None,
        job: Mapping[str, Any] | None = None,
    ) -> DeletionRequest:
        """With ``forget_dataset``, ``model`` and ``job`` (a job spec without model and
        forget; ``evaluation.holdout`` required) the service serves the request itself,
        batched with others for the same model and settings."""
        return await self._client.call(
            calls.create_deletion_request(
                subject,
                description=description,
                external_ref=external_ref,
                metadata=metadata,
                idempotency_key=idempotency_key,
                forget_dataset=forget_dataset,
                model=model,
                job=job,
            )
        )

    async def flush_batches(self) -> list[DeletionBatch]:
        """Serve the caller's open batches now (POST /v1/deletion-requests/batches/flush)."""
        return (await self._client.call(calls.flush_deletion_batches())).data

    async def get(self, request_id: str) -> DeletionRequest:
        return await self._client.call(calls.get_deletion_request(request_id))

    async def certificate(self, request_id: str) -> dict[str, Any]:
        return await self._client.call(calls.get_certificate(request_id))
