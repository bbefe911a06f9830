from __future__ import annotations

from fastapi import APIRouter
from pydantic import ValidationError

from api.body import JsonObject
from api.deps import DatabaseDep, ReadDatabaseDep, SettingsDep
from api.openapi import json_body
from api.routers.params import After, Limit
from api.schemas.common import ListObject
from api.schemas.models import ModelCreate, ModelObject
from api.services import models
from core.spec import invalid_request_from

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ListObject[ModelObject])
async def list_models(db: ReadDatabaseDep, after: After = None, limit: Limit = 20):
    """Demo models, registered base models and finished jobs' outputs, newest first."""
    return await db.run(models.list_models, after=after, limit=limit)


@router.post("", status_code=201, response_model=ModelObject, openapi_extra=json_body(ModelCreate))
async def register_model(body: JsonObject, db: DatabaseDep, settings: SettingsDep) -> ModelObject:
    """Register a base model location (``{name, source, description}``); the name is then
    usable as a job's ``model``. 409 ``model_exists`` if the name is taken."""
    try:
        request = ModelCreate.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    return await db.run(models.register_model, settings, request)


@router.get("/{name}", response_model=ModelObject)
async def get_model(name: str, db: ReadDatabaseDep) -> ModelObject:
    return await db.run(models.get_model, name)
