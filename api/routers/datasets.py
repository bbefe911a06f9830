from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import DatabaseDep, PrincipalDep, ReadDatabaseDep, SettingsDep, StoreDep
from api.openapi import UPLOAD_BODY
from api.routers.params import After, Limit
from api.schemas.common import ListObject
from api.schemas.datasets import DatasetObject
from api.services import datasets
from api.uploads import receive_upload
from core.data.limits import DataLimits

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=DatasetObject, openapi_extra=UPLOAD_BODY)
async def upload_dataset(
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    store: StoreDep,
    principal: PrincipalDep,
) -> DatasetObject:
    """Multipart: ``file`` (JSONL, CSV or Parquet) and optional ``name``. Every record is
    validated; errors name the file, line and field (``forget.jsonl:12:answer``). The
    file is stored encrypted under a key of its own (see docs/data-retention.md). 413
    when the file is over ``OBLIVIATE_MAX_UPLOAD_BYTES`` (``file_too_large``) or expands
    past a data limit: ``too_many_records``, ``decoded_too_large``, ``line_too_large``,
    ``cell_too_large``."""
    upload = await receive_upload(request, settings.max_upload_bytes)
    try:
        stored = await run_in_threadpool(
            datasets.validate_and_store,
            store,
            upload,
            upload.fields.get("name"),
            DataLimits.from_settings(settings),
            settings.master_key_file,
        )
    finally:
        upload.discard()
    return await db.run(datasets.record_dataset, stored, principal=principal)


@router.get("", response_model=ListObject[DatasetObject])
async def list_datasets(db: ReadDatabaseDep, after: After = None, limit: Limit = 20):
    """Newest first."""
    return await db.run(datasets.list_datasets, after=after, limit=limit)


@router.get("/{dataset_id}", response_model=DatasetObject)
async def get_dataset(dataset_id: str, db: ReadDatabaseDep) -> DatasetObject:
    return await db.run(datasets.get_dataset, dataset_id)


@router.post("/{dataset_id}/shred", response_model=DatasetObject)
async def shred_dataset(
    dataset_id: str, db: DatabaseDep, store: StoreDep, principal: PrincipalDep
) -> DatasetObject:
    """Crypto-shred: destroy the dataset's key, then its stored file; every copy of the
    ciphertext becomes unreadable. The dataset stays listed with its sha256, record count
    and ``shredded_at``; a job that names it fails with ``dataset_shredded``. Idempotent.
    409 ``dataset_in_use`` while an unfinished job reads it."""
    return await db.run(datasets.shred, store, dataset_id, principal=principal)
