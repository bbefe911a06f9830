from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas.common import ListObject
from api.schemas.models import ModelCreate, ModelObject
from core.db import model_registry as repo
from core.errors import ModelLocationError
from core.models.locations import ModelLocation, classify_model_location
from core.settings import Settings


def register_model(session: Session, settings: Settings, body: ModelCreate) -> ModelObject:
    """Register a base model location under a name jobs can use."""
    location = vet_model_location(body.source, settings, param="source")
    if location.kind == "registered":
        raise ModelLocationError(
            f"{body.source!r} is a model name, not a location; jobs can use it directly",
            param="source",
        )
    model = repo.register_model(
        session, body.name, location.value, "registered", description=body.description
    )
    session.commit()
    return ModelObject.from_row(model)


def get_model(session: Session, name: str) -> ModelObject:
    return ModelObject.from_row(repo.get_model_by_name(session, name))


def list_models(session: Session, *, after: str | None, limit: int) -> ListObject[ModelObject]:
    page = repo.list_models(session, after=after, limit=limit)
    data = [ModelObject.from_row(row) for row in page.items]
    return ListObject[ModelObject](
        data=data, has_more=page.has_more, last_id=data[-1].id if data else None
    )


def vet_model_location(reference: str, settings: Settings, *, param: str) -> ModelLocation:
    """classify_model_location, with the parsing errors of odd input (a bad IPv6 host, an
    over-long DNS label) reported as a bad field rather than a server error."""
    try:
        return classify_model_location(reference, settings, param=param)
    except ModelLocationError:
        raise
    except (ValueError, UnicodeError, OSError) as exc:
        raise ModelLocationError(
            f"{param}: not a usable model location: {exc}", param=param
        ) from None
