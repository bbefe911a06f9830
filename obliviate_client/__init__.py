"""A Python client for the Obliviate API (sync and async, typed, with retries)::

    from obliviate_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.jobs.create({"model": "demo-target", "forget": "ds_demo_forget10"})
        job = client.jobs.wait(job.id)

``OBLIVIATE_URL`` and ``OBLIVIATE_API_KEY`` are the defaults of both arguments.
"""

from obliviate_client.client import AsyncClient, Client
from obliviate_client.errors import ApiError
from obliviate_client.models import (
    ApiKey,
    AuditEntry,
    Checkpoint,
    Dataset,
    DeletionBatch,
    DeletionRequest,
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

__all__ = [
    "ApiError",
    "ApiKey",
    "AsyncClient",
    "AuditEntry",
    "Checkpoint",
    "Client",
    "Dataset",
    "DeletionBatch",
    "DeletionRequest",
    "Event",
    "Job",
    "Method",
    "Metric",
    "Model",
    "Page",
    "StreamMessage",
    "Webhook",
    "WebhookDelivery",
]
