from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import StrictBody
from core.db.tables import Model
from core.models.locations import NAME_PATTERN


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    source: str
    kind: Literal["demo", "registered", "job_output"]
    job_id: str | None
    description: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, model: Model) -> ModelObject:
        return cls(
            id=model.id,
            name=model.name,
            source=model.source,
            kind=model.kind,
            job_id=model.job_id,
            description=model.description,
            created_at=model.created_at,
        )


class ModelCreate(StrictBody):
    name: str = Field(
        ...,
        pattern=NAME_PATTERN.pattern,
        description="Name jobs use as their `model`: letters, digits, '.', '_', '-'.",
    )
    source: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="Where the weights are: allowed local folder, s3:// URL, https archive "
        "or hub id.",
    )
    description: str | None = Field(None, max_length=4096)
