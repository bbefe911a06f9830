"""GUARD's job hyperparameters and its entry in the method listing, apart from
``core.methods.guard`` so that the API can validate a ``method: guard`` job and list it
(GET /v1/methods) without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from core.methods.base import MethodOutput

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
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="Seed of the classifier's initialisation and of the held-out split.",
    )


@dataclass(frozen=True)
class GuardMethod:
    """GUARD as the method listing shows it (GET /v1/methods, ``obliviate methods``),
    with the fields of :class:`core.methods.base.Method` that a listing reads. It has no
    loss and trains nothing of the model, so it is not in ``core.methods.METHODS``."""

    name: str = GUARD_METHOD
    title: str = "GUARD: generation-time unlearning"
    description: str = (
        "Keeps the forget answers out of generated text without training the model: a "
        "prompt classifier on the frozen model's hidden states, and the forget answers' "
        "names, numbers and values blocked while decoding (docs/inference.md). Needs a "
        "retain set; takes no lora."
    )
    paper: str | None = "arXiv:2505.13312"
    hyperparameters: type[BaseModel] = GuardHyperparameters
    output: MethodOutput = "guard"

    def parse_hyperparameters(self, values: dict | None) -> GuardHyperparameters:
        return self.hyperparameters.model_validate(values or {})


GUARD = GuardMethod()
