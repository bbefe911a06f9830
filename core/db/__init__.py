"""Persistence: SQLAlchemy models (``tables``), engine and sessions (``engine``),
migrations (``migrate``) and the repository functions the API and worker share
(``jobs``, ``datasets``, ``model_registry``, ``artifacts``, ``idempotency``,
``deletion_requests``, ``audit``)."""

from core.db.engine import make_engine, make_session_factory
from core.db.tables import (
    AuditEntry,
    Base,
    Checkpoint,
    Dataset,
    DeletionRequest,
    IdempotencyKey,
    Job,
    JobEvent,
    JobMetric,
    Model,
    Report,
)

__all__ = [
    "AuditEntry",
    "Base",
    "Checkpoint",
    "Dataset",
    "DeletionRequest",
    "IdempotencyKey",
    "Job",
    "JobEvent",
    "JobMetric",
    "Model",
    "Report",
    "make_engine",
    "make_session_factory",
]
