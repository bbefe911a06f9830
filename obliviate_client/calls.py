"""Every API call the client makes, as data: method, path, parameters and the model its
answer parses into. The sync and the async client execute the same calls."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obliviate_client.models import (
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
    Webhook,
    WebhookDelivery,
)


@dataclass
class Call:
    method: str
    path: str
    params: list[tuple[str, Any]] = field(default_factory=list)
    json: Any = None
    files: Any = None
    data: Mapping[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: what a success parses into (None: the raw JSON)
    parse: Callable[[Any], Any] | None = None
    #: whether repeating the call is safe (reads, keyed writes, cancels)
    retry: bool = True
    #: the answer is a list page whose ``data`` items parse with ``parse``
    page: bool = False


def _params(**values: Any) -> list[tuple[str, Any]]:
    """Query parameters without the unset ones; lists repeat their name."""
    found: list[tuple[str, Any]] = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            found += [(name, item) for item in value]
        else:
            found.append((name, value))
    return found


def _key(idempotency_key: str | None) -> dict[str, str]:
    """Every create carries an Idempotency-Key (one is made when not given), so a retry
    after a lost answer returns the first result instead of doing it twice."""
    return {"Idempotency-Key": idempotency_key or f"obliviate-client-{uuid.uuid4()}"}


# -- jobs -------------------------------------------------------------------------------


def create_job(spec: Mapping[str, Any], idempotency_key: str | None) -> Call:
    return Call("POST", "/v1/jobs", json=dict(spec), headers=_key(idempotency_key), parse=Job)


def get_job(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}", parse=Job)


def list_jobs(
    *,
    status: list[str] | None,
    method: str | None,
    metadata: Mapping[str, str] | None,
    after: str | None,
    limit: int,
) -> Call:
    params = _params(status=status, method=method, after=after, limit=limit)
    params += [(f"metadata.{key}", value) for key, value in (metadata or {}).items()]
    return Call("GET", "/v1/jobs", params=params, parse=Job, page=True)


def job_action(job_id: str, action: str) -> Call:
    """``cancel``, ``pause`` or ``resume``: each asks for a state, so asking twice is safe."""
    return Call("POST", f"/v1/jobs/{job_id}/{action}", parse=Job)


def list_events(job_id: str, *, after: int | None, limit: int) -> Call:
    return Call(
        "GET",
        f"/v1/jobs/{job_id}/events",
        params=_params(after=after, limit=limit),
        parse=Event,
        page=True,
    )


def list_evaluations(job_id: str, *, after: int | None, limit: int) -> Call:
    return Call(
        "GET",
        f"/v1/jobs/{job_id}/evaluations",
        params=_params(after=after, limit=limit),
        parse=Evaluation,
        page=True,
    )


def list_metrics(job_id: str, *, after_step: int | None, limit: int) -> Call:
    params = _params(after_step=after_step, limit=limit)
    return Call("GET", f"/v1/jobs/{job_id}/metrics", params=params, parse=Metric, page=True)


def list_checkpoints(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}/checkpoints", parse=Checkpoint, page=True)


def get_report(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{job_id}/report")


# -- datasets, models, methods ----------------------------------------------------------


def upload_dataset(path: Path, name: str | None) -> Call:
    # The upload is read again on a retry; the server dedupes nothing, so retry only
    # what never reached it (see Client.request).
    return Call(
        "POST",
        "/v1/datasets",
        files={"file": (path.name, path.read_bytes())},
        data={"name": name} if name else None,
        parse=Dataset,
        retry=False,
    )


def get_dataset(dataset_id: str) -> Call:
    return Call("GET", f"/v1/datasets/{dataset_id}", parse=Dataset)


def shred_dataset(dataset_id: str) -> Call:
    # Idempotent on the server: a repeat changes nothing, so retrying is safe.
    return Call("POST", f"/v1/datasets/{dataset_id}/shred", parse=Dataset)


def list_datasets(*, after: str | None, limit: int) -> Call:
    return Call(
        "GET", "/v1/datasets", params=_params(after=after, limit=limit), parse=Dataset, page=True
    )


def list_models(*, after: str | None, limit: int) -> Call:
    return Call(
        "GET", "/v1/models", params=_params(after=after, limit=limit), parse=Model, page=True
    )


def get_model(name: str) -> Call:
    return Call("GET", f"/v1/models/{name}", parse=Model)


def register_model(name: str, source: str, description: str | None) -> Call:
    body = {"name": name, "source": source, "description": description}
    return Call("POST", "/v1/models", json=body, parse=Model, retry=False)


def list_methods() -> Call:
    return Call("GET", "/v1/methods", parse=Method, page=True)


def get_method(name: str) -> Call:
    return Call("GET", f"/v1/methods/{name}", parse=Method)


# -- deletion requests and the audit log ------------------------------------------------


def create_deletion_request(
    subject: str,
    *,
    description: str | None,
    external_ref: str | None,
    metadata: Mapping[str, str] | None,
    idempotency_key: str | None,
    forget_dataset: str | None = None,
    model: str | None = None,
    job: Mapping[str, Any] | None = None,
) -> Call:
    body: dict[str, Any] = {"subject": subject}
    if description is not None:
        body["description"] = description
    if external_ref is not None:
        body["external_ref"] = external_ref
    if metadata:
        body["metadata"] = dict(metadata)
    for name, value in (("forget_dataset", forget_dataset), ("model", model), ("job", job)):
        if value is not None:
            body[name] = dict(value) if name == "job" else value
    return Call(
        "POST",
        "/v1/deletion-requests",
        json=body,
        headers=_key(idempotency_key),
        parse=DeletionRequest,
    )


def flush_deletion_batches() -> Call:
    """Serve the caller's open batches now (one job each)."""
    return Call("POST", "/v1/deletion-requests/batches/flush", parse=DeletionBatch, page=True)


def get_deletion_request(request_id: str) -> Call:
    return Call("GET", f"/v1/deletion-requests/{request_id}", parse=DeletionRequest)


def get_certificate(request_id: str) -> Call:
    """The signed certificate (raw JSON: verify it as it came, with ``obliviate verify``)."""
    return Call("GET", f"/v1/deletion-requests/{request_id}/certificate")


def list_deletion_requests(*, status: list[str] | None, after: str | None, limit: int) -> Call:
    params = _params(status=status, after=after, limit=limit)
    return Call("GET", "/v1/deletion-requests", params=params, parse=DeletionRequest, page=True)


def list_audit(
    *,
    object_id: str | None,
    action: str | None,
    principal: str | None,
    after: int | None,
    limit: int,
) -> Call:
    params = _params(
        object_id=object_id, action=action, principal=principal, after=after, limit=limit
    )
    return Call("GET", "/v1/audit", params=params, parse=AuditEntry, page=True)


def list_audit_checkpoints(*, after: int | None, limit: int) -> Call:
    params = _params(after=after, limit=limit)
    return Call("GET", "/v1/audit/checkpoints", params=params, parse=AuditCheckpoint, page=True)


def verify_audit() -> Call:
    return Call("GET", "/v1/audit/verify", parse=ChainCheck)


# -- webhooks ---------------------------------------------------------------------------


def create_webhook(url: str, events: list[str], *, description: str | None) -> Call:
    # Not repeated after a lost answer: it has no Idempotency-Key, and a second webhook
    # would get every event twice.
    body: dict[str, Any] = {"url": url, "events": list(events)}
    if description is not None:
        body["description"] = description
    return Call("POST", "/v1/webhooks", json=body, parse=Webhook, retry=False)


def get_webhook(webhook_id: str) -> Call:
    return Call("GET", f"/v1/webhooks/{webhook_id}", parse=Webhook)


def list_webhooks(*, after: str | None, limit: int) -> Call:
    return Call(
        "GET", "/v1/webhooks", params=_params(after=after, limit=limit), parse=Webhook, page=True
    )


def disable_webhook(webhook_id: str) -> Call:
    return Call("DELETE", f"/v1/webhooks/{webhook_id}", parse=Webhook)


def list_webhook_deliveries(webhook_id: str, *, after: str | None, limit: int) -> Call:
    params = _params(after=after, limit=limit)
    return Call(
        "GET",
        f"/v1/webhooks/{webhook_id}/deliveries",
        params=params,
        parse=WebhookDelivery,
        page=True,
    )


# -- API keys ---------------------------------------------------------------------------


def create_key(role: str, *, name: str | None) -> Call:
    # Not repeated after a lost answer: the key is shown only in it.
    body: dict[str, Any] = {"role": role}
    if name is not None:
        body["name"] = name
    return Call("POST", "/v1/keys", json=body, parse=ApiKey, retry=False)


def list_keys(*, after: str | None, limit: int) -> Call:
    return Call(
        "GET", "/v1/keys", params=_params(after=after, limit=limit), parse=ApiKey, page=True
    )


def revoke_key(key_id: str) -> Call:
    return Call("DELETE", f"/v1/keys/{key_id}", parse=ApiKey)
