"""Existence checks for the references in a job spec, in one round trip."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.orm import Session

from core.db.ids import is_id
from core.db.tables import Dataset, Model
from core.models.locations import NAME_PATTERN

_datasets = Dataset.__table__.c
_models = Model.__table__.c

# Built once (expanding IN parameters): constructing it costs more than running it.
_EXISTING = union_all(
    select(literal("dataset").label("kind"), _datasets.id.label("ref")).where(
        _datasets.id.in_(bindparam("dataset_ids", expanding=True))
    ),
    select(literal("model").label("kind"), _models.name.label("ref")).where(
        _models.name.in_(bindparam("model_names", expanding=True))
    ),
)


def existing_references(
    session: Session, *, dataset_ids: Iterable[str], model_names: Iterable[str]
) -> tuple[set[str], set[str]]:
    """Which of the dataset ids and model names exist: ``(datasets, models)``. Values
    that cannot be ids or names are not looked up (so never reach the database)."""
    wanted_datasets = sorted({value for value in dataset_ids if is_id(value, "ds")})
    wanted_models = sorted({value for value in model_names if NAME_PATTERN.match(value)})
    found: dict[str, set[str]] = {"dataset": set(), "model": set()}
    if wanted_datasets or wanted_models:
        parameters = {"dataset_ids": wanted_datasets, "model_names": wanted_models}
        for kind, ref in session.connection().execute(_EXISTING, parameters):
            found[kind].add(ref)
    return found["dataset"], found["model"]
