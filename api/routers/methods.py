from __future__ import annotations

from fastapi import APIRouter

from api.schemas.common import ListObject
from api.schemas.methods import MethodObject
from api.services import methods

router = APIRouter(prefix="/v1/methods", tags=["methods"])


@router.get("", response_model=ListObject[MethodObject])
async def list_methods() -> ListObject[MethodObject]:
    """Every method a job may name, with its hyperparameter JSON schema (bounds), its
    defaults and its ``output``: ``weights`` for the training methods, ``guard`` for
    GUARD (generation-time; the weights stay as they are, so a guard job alone does not
    fulfil a deletion request)."""
    data = methods.list_methods()
    return ListObject[MethodObject](data=data, has_more=False, last_id=None)


@router.get("/{name}", response_model=MethodObject)
async def get_method(name: str) -> MethodObject:
    """One method of the listing, by name (404 ``method_not_found`` otherwise)."""
    return methods.get_method_object(name)
