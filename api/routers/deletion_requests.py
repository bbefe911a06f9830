from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from api.body import JsonObject
from api.dashboard.templating import render
from api.deps import (
    CeleryDep,
    DatabaseDep,
    PrincipalDep,
    ReadDatabaseDep,
    SettingsDep,
    StoreDep,
)
from api.openapi import json_body, replay_response
from api.routers.params import After, IdempotencyKey, Limit
from api.schemas.common import ListObject
from api.schemas.deletion_requests import (
    CertificateDocument,
    DeletionBatchObject,
    DeletionRequestCreate,
    DeletionRequestObject,
    DeletionRequestStatus,
)
from api.services import certificates, deletion_requests
from core import certificates as signing

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion requests"])


@router.post(
    "",
    status_code=201,
    response_model=DeletionRequestObject,
    openapi_extra=json_body(DeletionRequestCreate),
    responses=replay_response(DeletionRequestObject, "deletion request"),
)
async def create_deletion_request(
    body: JsonObject,
    db: DatabaseDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> DeletionRequestObject:
    """File a request to forget something (``{subject, description, external_ref,
    metadata}``); jobs then serve it with ``"deletion_request": "<id>"``. Filed with its
    records, model and job settings (``{forget_dataset, model, job}``) the service
    serves it: it joins the batch of requests for the same model and settings, served
    by one job when the batching window closes (docs/deletion-requests.md). 201 when
    created; 200 with the original when an ``Idempotency-Key`` is repeated with the
    same body."""
    request, created = await db.run(
        deletion_requests.create_deletion_request,
        settings,
        store,
        celery,
        body,
        principal=principal,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/deletion-requests/{request.id}"
    return request


@router.post("/batches/flush", response_model=ListObject[DeletionBatchObject])
async def flush_batches(
    db: DatabaseDep, settings: SettingsDep, store: StoreDep, celery: CeleryDep
) -> ListObject[DeletionBatchObject]:
    """Serve the caller's open batches now, without waiting for their windows to close:
    each becomes one job over the union of its requests' records. Lists the batches
    dispatched (none when nothing was waiting)."""
    return await db.run(deletion_requests.flush_batches, settings, store, celery)


@router.get("", response_model=ListObject[DeletionRequestObject])
async def list_deletion_requests(
    db: ReadDatabaseDep,
    status: Annotated[list[DeletionRequestStatus] | None, Query(description="Repeatable.")] = None,
    after: After = None,
    limit: Limit = 20,
) -> ListObject[DeletionRequestObject]:
    """Newest first. Filter: ``status`` (repeatable)."""
    return await db.run(
        deletion_requests.list_deletion_requests,
        statuses=status or [],
        after=after,
        limit=limit,
    )


@router.get("/{deletion_request_id}", response_model=DeletionRequestObject)
async def get_deletion_request(
    deletion_request_id: str, db: ReadDatabaseDep
) -> DeletionRequestObject:
    """With its status (derived from the linked jobs) and, for the newest 100 linked
    jobs, their state, output model and the verification evidence of their reports
    (``job_count`` counts them all; ``GET /v1/jobs`` lists every job)."""
    return await db.run(deletion_requests.get_deletion_request, deletion_request_id)


@router.get("/{deletion_request_id}/certificate", response_model=CertificateDocument)
async def get_certificate(
    deletion_request_id: str,
    db: DatabaseDep,
    principal: PrincipalDep,
    store: StoreDep,
    settings: SettingsDep,
) -> dict:
    """The signed forgetting certificate of a fulfilled request: the request, the job
    that fulfilled it, sha256 of the model before and after and of the data, the
    evidence and thresholds, the verdict, and the audit entries that produced it;
    Ed25519-signed (public key at ``/.well-known/obliviate/signing-key``). Issued the
    first time it is asked for, the same document after that. 409
    ``certificate_not_available`` (with the reason) until the request is fulfilled.
    Check it offline with ``obliviate verify CERTIFICATE``."""
    return await db.run(
        certificates.get_certificate,
        deletion_request_id,
        principal=principal,
        store=store,
        key_path=settings.signing_key_file,
    )


@router.get(
    "/{deletion_request_id}/certificate.html",
    response_class=HTMLResponse,
    include_in_schema=False,
)
async def get_certificate_page(
    deletion_request_id: str,
    request: Request,
    db: DatabaseDep,
    principal: PrincipalDep,
    store: StoreDep,
    settings: SettingsDep,
) -> HTMLResponse:
    """The certificate as a page to read or print, with its verification result."""
    document = await db.run(
        certificates.get_certificate,
        deletion_request_id,
        principal=principal,
        store=store,
        key_path=settings.signing_key_file,
    )
    check = signing.verify(
        document, certificates.signing_key(settings.signing_key_file).public_key()
    )
    return render(request, "certificate.html", document=document, check=check)
