"""Models the service knows by name: demo models, registered base models and the
outputs of finished jobs (so one job's output can be the next job's base)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.ids import new_id
from core.db.pagination import Page, paginate
from core.db.tables import MODEL_KINDS, Model
from core.errors import Conflict, NotFound
from core.models.locations import NAME_PATTERN
from core.tenancy import owner_tenant, scoped, visible


def register_model(
    session: Session,
    name: str,
    source: str,
    kind: str,
    job_id: str | None = None,
    description: str | None = None,
) -> Model:
    """Insert a model row (flushed, not committed).

    Registering again is a no-op that refreshes the source for a demo model (registered
    at every start) and for a job's output registered by the same job (a retried
    attempt). Any other existing name raises Conflict ``model_exists``; when that comes
    from losing a race on the unique name, the session has been rolled back.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    existing = session.scalar(select(Model).where(Model.name == name))
    if existing is not None:
        same_owner = existing.kind == kind and (
            kind == "demo" or (kind == "job_output" and existing.job_id == job_id)
        )
        if not same_owner:
            raise _name_taken(name)
        existing.source = source
        if description is not None:
            existing.description = description
        session.flush()
        return existing
    model = Model(
        id=new_id("mdl"),
        # The demo models are every tenant's.
        tenant_id=None if kind == "demo" else owner_tenant(),
        name=name,
        source=source,
        kind=kind,
        job_id=job_id,
        description=description,
    )
    session.add(model)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise _name_taken(name) from None
    return model


def get_model_by_name(session: Session, name: str) -> Model:
    model = None
    if NAME_PATTERN.match(name):
        model = session.scalar(select(Model).where(Model.name == name))
    if model is None or not visible(model.tenant_id):
        raise NotFound(f"no model named {name!r}", param="name", code="model_not_found")
    return model


def list_models(session: Session, *, after: str | None = None, limit: int = 20) -> Page[Model]:
    statement = scoped(select(Model), Model.tenant_id, shared_when_null=True)
    return paginate(session, statement, Model.id, after=after, limit=limit)


def all_models(session: Session) -> list[Model]:
    """Every registered model, oldest first (the OpenAI listing is not paginated)."""
    statement = scoped(select(Model), Model.tenant_id, shared_when_null=True)
    return list(session.scalars(statement.order_by(Model.id)))


def guard_variants(session: Session) -> list[tuple[str, Model]]:
    """``(<base>+<guard>, the guard's row)`` for every guard a job published (method
    guard): the name the guarded model is asked for by (core.methods.guard)."""
    from core.db.tables import Job

    statement = (
        select(Job.model, Model)
        .join(Job, Job.id == Model.job_id)
        .where(Model.kind == "job_output", Job.method == "guard")
    )
    rows = session.execute(scoped(statement, Model.tenant_id).order_by(Model.id)).all()
    return [(f"{base}+{model.name}", model) for base, model in rows]


def _name_taken(name: str) -> Conflict:
    return Conflict(f"a model named {name!r} already exists", param="name", code="model_exists")
