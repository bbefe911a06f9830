from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.methods import OUTPUT_DESCRIPTIONS, GuardMethod, Method


class MethodObject(BaseModel):
    name: str
    object: Literal["method"] = "method"
    title: str
    description: str
    paper: str | None
    hyperparameters_schema: dict[str, Any]
    defaults: dict[str, Any]
    output: Literal["weights", "guard"] = Field(
        description="What a job of this method publishes: weights (a checkpoint registered "
        "as a model), or guard (a decoding-time guard served as <model>+<job id>; the "
        "weights do not change)."
    )
    output_description: str = Field(
        description="What that output means, for deletion requests in particular."
    )

    @classmethod
    def from_method(cls, method: Method | GuardMethod) -> MethodObject:
        return cls(
            name=method.name,
            title=method.title,
            description=method.description,
            paper=method.paper,
            hyperparameters_schema=method.hyperparameters.model_json_schema(),
            defaults=method.hyperparameters().model_dump(mode="json"),
            output=method.output,
            output_description=OUTPUT_DESCRIPTIONS[method.output],
        )
