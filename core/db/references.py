"""Existence checks for the references in a job spec, in one round trip."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import bindparam, case, literal, select, union_all
from sqlalchemy.orm import Session

from core.db.ids import is_id
from core.db.tables import Dataset, DeletionRequest, Model
from core.models.locations import NAME_PATTERN
from core.tenancy import current_tenant

_datasets = Dataset.__table__.c
_models = Model.__table__.c
_deletion_requests = DeletionRequest.__table__.c


def _existing(*, scoped_to_tenant: bool):
    def owned(column, *, shared_when_null: bool):
        if not scoped_to_tenant:
            return True
        mine = column == bindparam("tenant")
        return mine | column.is_(None) if shared_when_null else mine

    return union_all(
        select(
            case((_datasets.shredded_at.is_(None), "dataset"), else_="shredded_dataset").label(
                "kind"
            ),
            _datasets.id.label("ref"),
        ).where(
            _datasets.id.in_(bindparam("dataset_ids", expanding=True)),
            owned(_datasets.tenant_id, shared_when_null=True),
        ),
        select(literal("model").label("kind"), _models.name.label("ref")).where(
            _models.name.in_(bindparam("model_names", expanding=True)),
            owned(_models.tenant_id, shared_when_null=True),
        ),
        select(literal("deletion_request").label("kind"), _deletion_requests.id.label("ref")).where(
            _deletion_requests.id.in_(bindparam("deletion_request_ids", expanding=True)),
            owned(_deletion_requests.tenant_id, shared_when_null=False),
        ),
    )


# Built once (expanding IN parameters): constructing it costs more than running it.
_EXISTING = _existing(scoped_to_tenant=False)
#: only the bound tenant's objects, and the shared ones (core.tenancy)
_EXISTING_OWNED = _existing(scoped_to_tenant=True)


class ExistingReferences(NamedTuple):
    datasets: set[str]  # usable: not shredded
    models: set[str]
    deletion_requests: set[str]
    shredded_datasets: set[str]


def existing_references(
    session: Session,
    *,
    dataset_ids: Iterable[str],
    model_names: Iterable[str],
    deletion_request_ids: Iterable[str] = (),
) -> ExistingReferences:
    """Which of the dataset ids, model names and deletion request ids exist (for the
    bound tenant, when one is; datasets that were shredded apart from the usable ones). Values that cannot be ids or names are not looked up
    (so never reach the database)."""
    parameters = {
        "dataset_ids": sorted({value for value in dataset_ids if is_id(value, "ds")}),
        "model_names": sorted({value for value in model_names if NAME_PATTERN.match(value)}),
        "deletion_request_ids": sorted(
            {value for value in deletion_request_ids if is_id(value, "dr")}
        ),
    }
    found: dict[str, set[str]] = {
        "dataset": set(),
        "shredded_dataset": set(),
        "model": set(),
        "deletion_request": set(),
    }
    if any(parameters.values()):
        tenant = current_tenant()
        statement = _EXISTING if tenant is None else _EXISTING_OWNED
        for kind, ref in session.connection().execute(statement, {**parameters, "tenant": tenant}):
            found[kind].add(ref)
    return ExistingReferences(
        found["dataset"], found["model"], found["deletion_request"], found["shredded_dataset"]
    )
