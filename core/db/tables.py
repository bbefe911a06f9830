"""The ORM tables. The schema itself only changes through ``migrations/``.

Status and kind columns are plain strings checked by the code (the ``*_STATUSES``
tuples), not database enums, so adding a value needs no enum migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.db.types import BigSerial, IdString, JSONDoc, UTCDateTime, utcnow

JOB_STATUSES = (
    "queued",
    "running",
    "pausing",
    "paused",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)
#: a worker holds the job (heartbeats, fenced writes)
ACTIVE_STATUSES = ("running", "pausing", "cancelling")
JOB_KINDS = ("unlearn", "finetune")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
MODEL_KINDS = ("demo", "registered", "job_output")
EVENT_LEVELS = ("info", "warning", "error")


class Base(DeclarativeBase):
    # Named constraints, so migrations (and SQLite batch table rebuilds) can refer to them.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    #: the owning tenant (core.tenancy); null for the demo assets every tenant shares
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    filename: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    record_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024))
    columns: Mapped[list[str]] = mapped_column(JSONDoc)
    has_truth_ratio_fields: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: the dataset's own data key, encrypted by the master key (core.envelope); NULL for
    #: a file stored before encryption (read as plain) and for a shredded dataset
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: when the key and the stored file were destroyed; the row (hashes, counts) stays
    shredded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    #: the owning tenant (core.tenancy); null for the demo assets every tenant shares
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(String(2048))
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("jobs.id", use_alter=True))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_method", "status", "method"),
        Index("ix_jobs_updated_at", "updated_at"),
    )

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    #: the owning tenant (core.tenancy)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default="default")
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(2048))
    forget_dataset_id: Mapped[str] = mapped_column(IdString, ForeignKey("datasets.id"))
    retain_dataset_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("datasets.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    seed: Mapped[int] = mapped_column(BigInteger)
    # "metadata" is reserved on declarative classes; the column keeps the API's name.
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(256))
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_param: Mapped[str | None] = mapped_column(String(512))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    output_model_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("models.id"))
    deletion_request_id: Mapped[str | None] = mapped_column(
        IdString, ForeignKey("deletion_requests.id"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16), server_default="unlearn", default="unlearn")
    #: the published evaluation point's verdict with ``target_met``; set when the job ends
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    pause_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: claims that resumed a paused run: attempts, but not failures (the reaper's limit)
    resumes: Mapped[int] = mapped_column(Integer, server_default="0", default=0)

    @property
    def error(self) -> dict[str, str | None] | None:
        if self.error_code is None:
            return None
        return {"code": self.error_code, "message": self.error_message, "param": self.error_param}


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigSerial, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_id_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(BigSerial, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    values: Mapped[dict[str, Any]] = mapped_column(JSONDoc)


class JobEvaluation(Base):
    """One evaluation point of a training run: the probe's figures and the verdict."""

    __tablename__ = "job_evaluations"
    __table_args__ = (Index("ix_job_evaluations_job_id_step", "job_id", "step"),)

    id: Mapped[int] = mapped_column(BigSerial, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: what the point cost (probe and verdict), for the share of the job it took
    seconds: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    #: the checkpoint kept for this point (``final``, ``last``), if any
    checkpoint: Mapped[str | None] = mapped_column(String(128))


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"))
    name: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)
    storage_prefix: Mapped[str] = mapped_column(String(1024))
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Report(Base):
    __tablename__ = "reports"

    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"), primary_key=True)
    schema_version: Mapped[str] = mapped_column(String(16))  # the report's, e.g. "1.0"
    summary: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    json_key: Mapped[str] = mapped_column(String(1024))
    html_key: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """One row per (principal, key): the primary key is what makes concurrent
    duplicates safe, since only one insert can win. A key made either a job or a
    deletion request (one namespace per principal: reusing a job's key for a deletion
    request is a conflict)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint("(job_id IS NULL) <> (deletion_request_id IS NULL)", name="one_target"),
    )

    principal: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("jobs.id"))
    deletion_request_id: Mapped[str | None] = mapped_column(
        IdString, ForeignKey("deletion_requests.id")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeletionRequest(Base):
    """A request to forget something ("everything about subject X"). Its status is
    derived from the jobs that link to it (``job_deletion_requests``), never stored.

    A request filed with its records (``forget_dataset_id``), the ``model`` to forget
    from and the job ``settings`` is served by the service itself: it joins the open
    batch of its (tenant, model, settings) (``batch_id``, ``core.deletion_batches``)."""

    __tablename__ = "deletion_requests"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    #: the owning tenant (core.tenancy)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default="default")
    subject: Mapped[str] = mapped_column(String(512))
    description: Mapped[str | None] = mapped_column(Text)
    external_ref: Mapped[str | None] = mapped_column(String(256))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: the subject's records (a batched request); null for a request jobs are linked to
    forget_dataset_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("datasets.id"))
    model: Mapped[str | None] = mapped_column(String(2048))
    #: the job settings (``core.deletion_batches.BatchJobSettings``), canonical JSON
    job_settings: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    #: the batch serving it (no foreign key: batches name jobs, which name requests)
    batch_id: Mapped[str | None] = mapped_column(IdString, index=True)


BATCH_STATUSES = ("open", "dispatched")


class DeletionBatch(Base):
    """Requests for one (tenant, model, settings) that arrived within the batching window
    (``core.deletion_batches``): served by one job over the union of their records.
    ``open`` until the window closes (``closes_at``) or someone flushes it; then
    ``dispatched`` with its ``job_id`` (one conditional UPDATE: one job per batch).
    ``cost`` holds the measured and estimated seconds once the job ended."""

    __tablename__ = "deletion_batches"
    __table_args__ = (Index("ix_deletion_batches_status_closes_at", "status", "closes_at"),)

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default="default")
    model: Mapped[str] = mapped_column(String(2048))
    #: sha256 of the canonical JSON of the job settings: requests batch when it is equal
    settings_key: Mapped[str] = mapped_column(String(64))
    job_settings: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closes_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    job_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("jobs.id"), unique=True)
    #: the union of the requests' records the job trains on
    union_dataset_id: Mapped[str | None] = mapped_column(IdString, ForeignKey("datasets.id"))
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)


class JobDeletionRequest(Base):
    """Which jobs serve which deletion requests: a job submitted with
    ``deletion_request`` links to that one; a batch job to every request of its batch.

    ``records_verdict`` is null for a job that trained on the request's own forget set
    (its verdict speaks for those records). A batch job trained on a union, so each
    request's own records are checked too (``core.batch_evidence``): ``pending`` until
    the job ends, then the verdict of that check, with ``records_evidence`` its figures
    and ``records`` where the request's records sit in the union."""

    __tablename__ = "job_deletion_requests"

    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"), primary_key=True)
    deletion_request_id: Mapped[str] = mapped_column(
        IdString, ForeignKey("deletion_requests.id"), primary_key=True, index=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64), server_default="default")
    records_verdict: Mapped[str | None] = mapped_column(String(16))
    records_evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    #: {dataset_id, sha256, count, offset}: the request's records and their place in the union
    records: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)


class Certificate(Base):
    """The signed forgetting certificate of a fulfilled deletion request, kept as issued
    (``document`` is the whole signed JSON) so that every copy handed out is the same."""

    __tablename__ = "certificates"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    deletion_request_id: Mapped[str] = mapped_column(
        IdString, ForeignKey("deletion_requests.id"), unique=True
    )
    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"))
    key_id: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    document: Mapped[dict[str, Any]] = mapped_column(JSONDoc)


class RegressionCheck(Base):
    """A later job's re-check of a certified request's forget records (issue 9): the job
    started from a model built on the certified one, so the forgetting may have come
    back. ``status`` is the verdict on the new model, or ``not_checked`` (``result``
    says why: a shredded forget set); ``regressed`` when a checked verdict is no longer
    ``forgotten``. The request's newest check decides whether it needs attention."""

    __tablename__ = "regression_checks"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    #: the owning tenant (core.tenancy)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default="default")
    deletion_request_id: Mapped[str] = mapped_column(
        IdString, ForeignKey("deletion_requests.id"), index=True
    )
    #: the job whose model was re-checked, and the job the certificate names
    job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"))
    certified_job_id: Mapped[str] = mapped_column(IdString, ForeignKey("jobs.id"))
    status: Mapped[str] = mapped_column(String(16))
    regressed: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """Append-only: triggers (see migration 0002) make UPDATE and DELETE fail on both
    databases. Written in the transaction of the action it records
    (``core.db.audit.add_audit_entry``)."""

    __tablename__ = "audit_log"
    # A tenant's chain is read in id order (``core.db.audit.verify_chain``).
    __table_args__ = (Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigSerial, primary_key=True, autoincrement=True)
    #: the owning tenant (core.tenancy): whose hash chain the entry is part of
    tenant_id: Mapped[str] = mapped_column(String(64), server_default="default")
    # The writer's UTC clock (it is hashed, so known before the insert); the default,
    # the database's clock, is for rows written before the hash chain.
    at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    principal: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(IdString, index=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    #: the hash chain (``core.db.audit``); null only on entries written before it
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    entry_hash: Mapped[str | None] = mapped_column(String(64))


class AuditHead(Base):
    """One row per tenant: how many entries its audit chain holds and the newest one's
    hash (migration 0013; before it, one row for a service-wide chain)."""

    __tablename__ = "audit_head"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    entries: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed copy of a tenant's audit chain head (``core.audit_checkpoints``): at
    ``at`` the chain of ``tenant_id`` held ``entries`` entries, the newest hashing to
    ``head_hash``. ``signature`` (base64) is Ed25519, by the key ``key_id`` names, over
    the canonical JSON of ``{at, entries, head_hash, tenant}``. A null tenant marks a
    legacy checkpoint, signed before migration 0013 over ``{at, entries, head_hash}`` of
    the service-wide chain (``core.db.audit_legacy``). Append-only, like the log."""

    __tablename__ = "audit_checkpoints"
    #: one checkpoint per head: two API replicas signing the same head keep one
    __table_args__ = (UniqueConstraint("tenant_id", "entries"),)

    id: Mapped[int] = mapped_column(BigSerial, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    entries: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


WEBHOOK_EVENTS = (
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "deletion_request.fulfilled",
    "deletion_request.needs_attention",
)
DELIVERY_STATUSES = ("pending", "delivered", "failed")


class Webhook(Base):
    """An endpoint that is sent the events it subscribed to (``core.db.webhooks``).
    Deleting one disables it (``disabled_at``): its deliveries stay readable."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    #: the owning tenant (core.tenancy)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True, server_default="default")
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSONDoc)
    #: the HMAC key deliveries are signed with; shown to the client once, at creation
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event for one webhook: written in the transaction of the event (an outbox),
    sent by the workers (``core.webhooks.delivery``), retried with backoff until
    ``delivered`` or ``failed``. ``attempt_log`` holds every attempt's outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(IdString, ForeignKey("webhooks.id"))
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: when a sender may take it next (also a sender's lease while it sends)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Tenant(Base):
    """An organisation: it owns objects, and its keys see only its objects."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key of one tenant with one role (``core.tenancy.ROLE_PERMISSIONS``). Only
    the key's sha256 is kept; ``prefix`` (its first characters) lets people tell keys
    apart in listings."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(IdString, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(256))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
