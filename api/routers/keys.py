"""API keys: an admin of a tenant makes, lists and revokes its keys. (The first key of
a tenant comes from ``obliviate keys create``, on the database directly.)"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.body import JsonObject
from api.deps import DatabaseDep, ReadDatabaseDep
from api.openapi import json_body
from api.routers.params import After, Limit
from api.schemas.common import ListObject
from api.schemas.keys import KeyCreate, KeyCreated, KeyObject
from api.services import keys

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated, openapi_extra=json_body(KeyCreate))
async def create_key(
    body: JsonObject, request: Request, db: DatabaseDep, response: Response
) -> KeyCreated:
    """A new key of the caller's tenant (``{role, name}``). The answer holds the key,
    shown this once; the service keeps only its sha256."""
    caller = request.state.caller
    key = await db.run(keys.create_key, body, tenant=caller.tenant, principal=caller.principal)
    response.headers["Location"] = f"/v1/keys/{key.id}"
    return key


@router.get("", response_model=ListObject[KeyObject])
async def list_keys(
    request: Request, db: ReadDatabaseDep, after: After = None, limit: Limit = 20
) -> ListObject[KeyObject]:
    """The tenant's keys, revoked ones included, without the keys themselves."""
    tenant = request.state.caller.tenant
    return await db.run(keys.list_keys, tenant=tenant, after=after, limit=limit)


@router.delete("/{key_id}", response_model=KeyObject)
async def revoke_key(key_id: str, request: Request, db: DatabaseDep) -> KeyObject:
    """Revoke: the key stops working at once on this API process, within seconds on
    the others (docs/access.md)."""
    caller = request.state.caller
    key = await db.run(keys.revoke_key, key_id, tenant=caller.tenant, principal=caller.principal)
    request.app.state.keyring.forget(key.id)
    return key
