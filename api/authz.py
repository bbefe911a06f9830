"""Who may call which route: one rule per route, and the tenant check of the objects a
path names.

Every route of ``/v1`` and ``/openai/v1`` is in ``RULES``; a route added without a rule
is refused to everyone (403 ``no_access_rule``) and fails the test that walks the
OpenAPI document (tests/integration/test_api_tenancy.py), so a new route cannot be
open by omission. Authentication (who is calling) is ``api.auth``'s, before routing;
this runs after routing, as a dependency of the protected routers, because only then
is the route (and so its rule and its path parameters) known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import select

from core.db.ids import is_id
from core.db.tables import Dataset, DeletionRequest, Job, Webhook
from core.errors import Forbidden, NotFound
from core.tenancy import ROLE_PERMISSIONS, roles_with

READ, SUBMIT, AUDIT, ADMIN = "read", "submit", "audit", "admin"
#: open to anyone who can reach the service (outside /v1; listed so the walk covers them)
PUBLIC = "public"

RULES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/.well-known/obliviate/signing-key"): PUBLIC,
    ("POST", "/v1/datasets"): SUBMIT,
    ("GET", "/v1/datasets"): READ,
    ("GET", "/v1/datasets/{dataset_id}"): READ,
    ("POST", "/v1/datasets/{dataset_id}/shred"): SUBMIT,
    ("GET", "/v1/jobs/stream"): READ,
    ("GET", "/v1/jobs/{job_id}/stream"): READ,
    ("POST", "/v1/jobs"): SUBMIT,
    ("GET", "/v1/jobs"): READ,
    ("GET", "/v1/jobs/{job_id}"): READ,
    ("POST", "/v1/jobs/{job_id}/cancel"): SUBMIT,
    ("POST", "/v1/jobs/{job_id}/pause"): SUBMIT,
    ("POST", "/v1/jobs/{job_id}/resume"): SUBMIT,
    ("GET", "/v1/jobs/{job_id}/evaluations"): READ,
    ("GET", "/v1/jobs/{job_id}/events"): READ,
    ("GET", "/v1/jobs/{job_id}/metrics"): READ,
    ("GET", "/v1/jobs/{job_id}/checkpoints"): READ,
    ("GET", "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/files/{path}"): READ,
    ("GET", "/v1/jobs/{job_id}/report"): READ,
    ("GET", "/v1/jobs/{job_id}/report.html"): READ,
    ("GET", "/v1/jobs/{job_id}/report/files/{name}"): READ,
    ("GET", "/v1/methods"): READ,
    ("GET", "/v1/methods/{name}"): READ,
    ("GET", "/v1/job-spec"): READ,
    ("GET", "/v1/models"): READ,
    ("POST", "/v1/models"): SUBMIT,
    ("GET", "/v1/models/{name}"): READ,
    ("POST", "/v1/deletion-requests"): SUBMIT,
    ("POST", "/v1/deletion-requests/batches/flush"): SUBMIT,
    ("GET", "/v1/deletion-requests"): READ,
    ("GET", "/v1/deletion-requests/{deletion_request_id}"): READ,
    ("GET", "/v1/deletion-requests/{deletion_request_id}/certificate"): AUDIT,
    ("GET", "/v1/deletion-requests/{deletion_request_id}/certificate.html"): AUDIT,
    ("GET", "/v1/audit"): AUDIT,
    ("GET", "/v1/audit/verify"): AUDIT,
    ("GET", "/v1/audit/checkpoints"): AUDIT,
    ("POST", "/v1/webhooks"): ADMIN,
    ("GET", "/v1/webhooks"): ADMIN,
    ("GET", "/v1/webhooks/{webhook_id}"): ADMIN,
    ("DELETE", "/v1/webhooks/{webhook_id}"): ADMIN,
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): ADMIN,
    ("POST", "/v1/keys"): ADMIN,
    ("GET", "/v1/keys"): ADMIN,
    ("DELETE", "/v1/keys/{key_id}"): ADMIN,
    # Asking a model is reading it: every role may (a compliance officer checks that
    # the model no longer answers).
    ("GET", "/openai/v1/models"): READ,
    ("GET", "/openai/v1/models/{name}"): READ,
    ("POST", "/openai/v1/chat/completions"): READ,
    ("POST", "/openai/v1/completions"): READ,
}


@dataclass(frozen=True)
class Owned:
    """A path parameter that names a tenant's object, and the 404 its route gives for
    an unknown one (a foreign object gets the very same answer)."""

    table: Any
    noun: str
    code: str


OWNED_PARAMETERS: dict[str, Owned] = {
    "job_id": Owned(Job, "job", "job_not_found"),
    "dataset_id": Owned(Dataset, "dataset", "dataset_not_found"),
    "deletion_request_id": Owned(DeletionRequest, "deletion request", "deletion_request_not_found"),
    "webhook_id": Owned(Webhook, "webhook", "webhook_not_found"),
}


@dataclass(frozen=True)
class Caller:
    """Who is calling (set on the request by ``api.auth``)."""

    principal: str
    tenant: str
    role: str
    key_id: str | None = None


def rule_for(method: str, path: str) -> str | None:
    return RULES.get(("GET" if method == "HEAD" else method, path))


def check_role(caller: Caller, method: str, path: str) -> None:
    """Forbidden unless ``caller``'s role allows the route's rule."""
    permission = rule_for(method, path)
    if permission is None:
        raise Forbidden(
            f"{method} {path} has no access rule, so nobody may call it",
            code="no_access_rule",
        )
    if permission == PUBLIC or permission in ROLE_PERMISSIONS.get(caller.role, ()):
        return
    roles = " or ".join(roles_with(permission))
    raise Forbidden(
        f"{method} {path} needs the {roles} role; this API key's role is {caller.role}",
        code="forbidden",
    )


class OwnerCache:
    """The tenant of each object a path has named (an object's tenant never changes,
    so this is kept; bounded, and cleared when full)."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self._owners: dict[tuple[str, str], str | None] = {}

    def cached(self, name: str, object_id: str) -> tuple[bool, str | None] | None:
        key = (name, object_id)
        return (True, self._owners[key]) if key in self._owners else None

    def lookup(self, session, name: str, object_id: str) -> tuple[bool, str | None]:
        """``(exists, tenant)``; a shared object's tenant is None."""
        key = (name, object_id)
        table = OWNED_PARAMETERS[name].table
        row = session.execute(select(table.tenant_id).where(table.id == object_id)).first()
        if row is None:
            return False, None
        if len(self._owners) >= self.size:
            self._owners.clear()
        self._owners[key] = row.tenant_id
        return True, row.tenant_id


async def authorize(request: Request) -> None:
    """The dependency of every protected router: the caller's role allows the route,
    and every object the path names is the caller's tenant's (else the same 404 as an
    unknown one: another tenant's object is never confirmed to exist)."""
    caller: Caller = request.state.caller
    route = request.scope["route"]
    check_role(caller, request.method, route.path_format)
    named = {
        name: value
        for name, value in request.path_params.items()
        # Anything that cannot be an id is unknown (the route says so, and never
        # sends it to the database).
        if name in OWNED_PARAMETERS and isinstance(value, str) and is_id(value)
    }
    if not named:
        return
    owners: OwnerCache = request.app.state.owner_cache
    database = request.app.state.resources.read_database
    for name, object_id in named.items():
        found = owners.cached(name, object_id)
        if found is None:
            found = await database.run(owners.lookup, name, object_id)
        exists, owner = found
        if not exists:
            continue  # the route answers its own 404
        if owner is None:
            if request.method not in ("GET", "HEAD"):
                raise Forbidden(
                    f"{object_id!r} is shared by every tenant and cannot be changed",
                    param=name,
                    code="shared_object",
                )
        elif owner != caller.tenant:
            owned = OWNED_PARAMETERS[name]
            raise NotFound(f"no {owned.noun} with id {object_id!r}", param=name, code=owned.code)
