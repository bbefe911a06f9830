"""GUARD's job hyperparameters, apart from ``core.methods.guard`` so that the API can
validate a ``method: guard`` job without importing torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: the job method whose output is a guard, not weights (not in core.methods.METHODS)
GUARD_METHOD = "guard"


class GuardHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    hidden_size: int = Field(64, ge=4, le=4096, description="Width of the classifier's MLP.")
    epochs: int = Field(300, ge=1, le=10_000, description="Full-batch classifier epochs.")
    learning_rate: float = Field(1e-2, gt=0, le=1, description="Classifier Adam rate.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Flag a prompt above this score.")
    semantic_threshold: float = Field(
        0.9, gt=0, le=1, description="Embedding cosine above which a token is a span's."
    )
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="Prompts kept out of classifier training, for its scores."
    )
    seed: int = 0
