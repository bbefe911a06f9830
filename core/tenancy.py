"""Tenants and roles: who owns an object, and what a caller may do.

Every object (dataset, job, model, deletion request, audit entry, webhook) belongs to
one tenant. The tenant of the work in progress lives in a context variable, bound
where a request is authenticated (``api.auth``) or where a worker claims a job
(``worker.runner``); the database functions in ``core.db`` read it to scope their
queries and to stamp what they create. Nothing bound (management commands, the
reaper, tests) means no scoping: such code works on every tenant's objects.

A context variable rather than a parameter on every function: the scope then follows
the call into the database thread (``api.database`` copies the context), and a query
written later is scoped by the same helper instead of by each caller remembering to
pass a tenant down.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the tenant of the embedded default, of the keys in OBLIVIATE_API_KEYS, and of every
#: object made before tenants existed
DEFAULT_TENANT = "default"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

#: what each role may do; routes name the permission they need (``api.authz``)
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "auditor": frozenset({"read", "audit"}),
    "submitter": frozenset({"read", "submit"}),
    "admin": frozenset({"read", "submit", "audit", "admin"}),
}
ROLES = tuple(ROLE_PERMISSIONS)

_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "obliviate_tenant", default=None
)


def current_tenant() -> str | None:
    return _tenant.get()


def bind_tenant(tenant: str | None) -> None:
    """Scope the rest of this task's (or thread's) work to ``tenant``."""
    _tenant.set(tenant)


@contextmanager
def tenant_bound(tenant: str | None) -> Iterator[None]:
    token = _tenant.set(tenant)
    try:
        yield
    finally:
        _tenant.reset(token)


def scoped(statement: Any, column: Any, *, shared_when_null: bool = False) -> Any:
    """``statement`` limited to the bound tenant's rows (unchanged when none is bound).
    ``shared_when_null``: rows without a tenant (the demo models) are everyone's."""
    tenant = _tenant.get()
    if tenant is None:
        return statement
    if shared_when_null:
        return statement.where((column == tenant) | column.is_(None))
    return statement.where(column == tenant)


def owner_tenant() -> str:
    """The tenant a new object belongs to."""
    return _tenant.get() or DEFAULT_TENANT


def roles_with(permission: str) -> list[str]:
    return [role for role, permissions in ROLE_PERMISSIONS.items() if permission in permissions]


def visible(owner: str | None) -> bool:
    """Whether an object of ``owner`` (None: shared) is the bound tenant's to see."""
    tenant = _tenant.get()
    return tenant is None or owner is None or owner == tenant
