"""Forgetting certificates of fulfilled deletion requests: issued once, kept, signed.

A request gets its certificate the first time one is asked for after it became
``fulfilled``; the signed document is stored and every later copy is that same
document. Issuing writes a ``certificate.issued`` audit entry in the same transaction,
and the certificate lists the audit entries of the request and of the job that
fulfilled it, that one included.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.schemas.deletion_requests import Evidence
from core import certificates
from core.db import artifacts
from core.db import deletion_requests as requests_repo
from core.db.audit import add_audit_entry, submitter_of
from core.db.datasets import get_dataset
from core.db.ids import is_id, new_id
from core.db.tables import AuditEntry, Certificate, Job, Model
from core.db.types import utcnow
from core.errors import Conflict, NotFound
from core.models.checkpoint import MANIFEST, folder_digest
from core.storage.base import ObjectNotFound, ObjectStore

SERVICE = "obliviate"
SERVICE_VERSION = "0.1.0"


@lru_cache(maxsize=4)
def signing_key(path: Path):
    """The service's Ed25519 key (``settings.signing_key_file``), read once."""
    return certificates.load_or_create_private_key(path)


def public_key_document(key_path: Path) -> dict[str, str]:
    return certificates.public_key_document(signing_key(key_path).public_key())


def get_certificate(
    session: Session, request_id: str, *, principal: str, store: ObjectStore, key_path: Path
) -> dict[str, Any]:
    """The signed certificate of a fulfilled request (issued now if it has none yet).
    404 for an unknown request; 409 ``certificate_not_available`` with the reason while
    it is not fulfilled."""
    view = requests_repo.get_deletion_request(session, request_id)
    stored = session.scalar(
        select(Certificate).where(Certificate.deletion_request_id == view.request.id)
    )
    if stored is not None:
        return stored.document
    job = view.fulfilled_by
    if job is None:
        raise Conflict(
            f"deletion request {request_id} is {view.status}, so it has no certificate: "
            f"{view.status_reason}",
            param="deletion_request_id",
            code="certificate_not_available",
        )
    try:
        document = _issue(
            session, view, job, principal=principal, store=store, key=signing_key(key_path)
        )
        session.commit()
    except IntegrityError:  # issued concurrently by another request: keep that one
        session.rollback()
        stored = session.scalar(
            select(Certificate).where(Certificate.deletion_request_id == view.request.id)
        )
        if stored is None:
            raise
        return stored.document
    return document


def _issue(session: Session, view, link, *, principal: str, store, key) -> dict[str, Any]:
    """``link``: the request's row of the job that fulfilled it (with the check of the
    request's own records when it was a batch job)."""
    job_id = link.id
    key_id = certificates.key_id_of(key.public_key())
    certificate_id = new_id("cert")
    request = view.request
    add_audit_entry(
        session,
        principal=principal,
        action="certificate.issued",
        object_type="deletion_request",
        object_id=request.id,
        data={"certificate_id": certificate_id, "job_id": job_id, "key_id": key_id},
    )
    session.flush()
    body = _body(session, store, certificate_id, request, session.get(Job, job_id))
    if link.records_verdict is not None:
        body.update(_batched(session, view, link))
    document = certificates.sign(body, key)
    session.add(
        Certificate(
            id=certificate_id,
            deletion_request_id=request.id,
            job_id=job_id,
            key_id=key_id,
            document=document,
        )
    )
    session.flush()
    return document


def _body(
    session: Session, store: ObjectStore, certificate_id: str, request, job: Job
) -> dict[str, Any]:
    report = artifacts.get_report(session, job.id)
    summary = report.summary if report is not None else {}
    output = session.get(Model, job.output_model_id) if job.output_model_id else None
    published = _published_checkpoint(session, job.id)
    return {
        "version": certificates.CERTIFICATE_VERSION,
        "certificate_id": certificate_id,
        "issuer": {"service": SERVICE, "version": SERVICE_VERSION},
        "issued_at": utcnow().isoformat(),
        "deletion_request": {
            "id": request.id,
            "subject": request.subject,
            "description": request.description,
            "external_ref": request.external_ref,
            "metadata": request.metadata_,
            "created_at": request.created_at.isoformat(),
        },
        "job": {
            "id": job.id,
            "kind": job.kind,
            "method": job.method,
            "hyperparameters": job.hyperparameters,
            "seed": job.seed,
            "lora": job.spec.get("lora"),
            "target": job.spec.get("target"),
            "submitted_by": submitter_of(session, job.id),
            "created_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        },
        "model_before": _model_before(session, store, job, published),
        "model_after": _model_after(output, published),
        "data": _data(session, job),
        "evidence": Evidence.from_summary(summary).model_dump(),
        "verdict": job.verdict,
        "audit": _audit_entries(session, [request.id, job.id]),
    }


def _batched(session: Session, view, link) -> dict[str, Any]:
    """What a certificate of a batched request adds: the batch, and the request's own
    records (their hash and count) with the evidence measured on them alone. ``data``
    and ``evidence`` are then the batch job's, over the union of the batch's records."""
    evidence = dict(link.records_evidence or {})
    records = evidence.get("records") or {}
    batch = view.batch
    return {
        "batch": {
            "id": batch.id if batch is not None else None,
            "requests": len(view.batch_requests),
            "union_dataset": batch.union_dataset_id if batch is not None else None,
        },
        "request_records": {
            "id": records.get("dataset_id"),
            "sha256": records.get("sha256"),
            "records": records.get("count"),
            "offset_in_union": records.get("offset"),
        },
        "request_evidence": {
            "status": link.records_verdict,
            "reason": evidence.get("reason"),
            "small_sample": evidence.get("small_sample"),
            "checks": evidence.get("checks") or [],
            "figures": evidence.get("figures"),
            "rule": "fulfilled: the batch job's verdict on the union is forgotten and "
            "this request's own records pass the verdict's forgetting checks",
        },
    }


def _model_before(session: Session, store: ObjectStore, job: Job, published) -> dict[str, Any]:
    """The base model as the job named it, with the digest of its files the worker
    recorded in the published checkpoint's manifest (``base_model_sha256``: null for a
    hub model)."""
    registered = session.scalar(select(Model).where(Model.name == job.model))
    return {
        "reference": job.model,
        "source": registered.source if registered is not None else job.model,
        "sha256": _manifest(store, published).get("base_model_sha256"),
    }


def _manifest(store: ObjectStore, published) -> dict[str, Any]:
    if published is None:
        return {}
    try:
        return json.loads(store.get_bytes(f"{published.storage_prefix}/{MANIFEST}"))
    except (ObjectNotFound, ValueError):
        return {}


def _model_after(output: Model | None, published) -> dict[str, Any]:
    return {
        "name": output.name if output is not None else None,
        "source": output.source if output is not None else None,
        "checkpoint": published.name if published is not None else None,
        "step": published.step if published is not None else None,
        "manifest_sha256": published.manifest_sha256 if published is not None else None,
        "sha256": (
            folder_digest([f for f in published.files if f["path"] != MANIFEST])
            if published is not None
            else None
        ),
        "files": [
            {"path": f["path"], "sha256": f["sha256"], "size": f["size"]}
            for f in (published.files if published is not None else [])
        ],
    }


def _published_checkpoint(session: Session, job_id: str):
    checkpoints = artifacts.list_checkpoints(session, job_id)
    return next(
        (c for c in checkpoints if c.name == "final"), checkpoints[-1] if checkpoints else None
    )


def _data(session: Session, job: Job) -> dict[str, Any]:
    """Digests and counts of the data, never its records."""
    refs = {
        "forget": job.forget_dataset_id,
        "retain": job.retain_dataset_id,
        "holdout": (job.spec.get("evaluation") or {}).get("holdout"),
    }
    data: dict[str, Any] = {}
    for role, ref in refs.items():
        if ref is None:
            continue
        if not is_id(ref, "ds"):
            data[role] = {"reference": ref}
            continue
        try:
            dataset = get_dataset(session, ref)
        except NotFound:
            data[role] = {"reference": ref}
            continue
        data[role] = {
            "id": dataset.id,
            "sha256": dataset.sha256,
            "records": dataset.record_count,
            "bytes": dataset.size_bytes,
        }
    return data


def _audit_entries(session: Session, object_ids: list[str]) -> list[dict[str, Any]]:
    entries = session.scalars(
        select(AuditEntry).where(AuditEntry.object_id.in_(object_ids)).order_by(AuditEntry.id)
    )
    return [
        {
            "id": entry.id,
            "at": entry.at.isoformat(),
            "principal": entry.principal,
            "action": entry.action,
            "object_type": entry.object_type,
            "object_id": entry.object_id,
            "data": entry.data,
        }
        for entry in entries
    ]
