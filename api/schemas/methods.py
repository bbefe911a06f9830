from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from core.methods import Method


class MethodObject(BaseModel):
    name: str
    object: Literal["method"] = "method"
    title: str
    description: str
    paper: str | None
    hyperparameters_schema: dict[str, Any]
    defaults: dict[str, Any]

    @classmethod
    def from_method(cls, method: Method) -> MethodObject:
        return cls(
            name=method.name,
            title=method.title,
            description=method.description,
            paper=method.paper,
            hyperparameters_schema=method.hyperparameters.model_json_schema(),
            defaults=method.hyperparameters().model_dump(mode="json"),
        )
