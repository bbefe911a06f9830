"""Plain supervised fine-tuning (answer-token NLL descent) through the shared loop.

Used to build the demo target and retrain models and by the relearning attack. It is
not an unlearning method, so it is not in the method registry.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.methods.base import ForgetInputs, LossTerm, Method, UnlearningHyperparameters
from core.training.loop import Callbacks, TrainResult, run_training


class FinetuneHyperparameters(UnlearningHyperparameters):
    retain_loss: Literal["nll", "kl", "none"] = Field("none", description="No retain term.")
    retain_coeff: float = Field(0.0, ge=0, le=0, description="Fine-tuning has no retain term.")


def _descent_term(inputs: ForgetInputs, hparams) -> LossTerm:
    # Token-mean NLL, as a causal-LM trainer computes it.
    return LossTerm(per_sequence=inputs.nll, reduction="token", n_tokens=inputs.n_tokens)


FINETUNE = Method(
    name="finetune",
    title="Fine-tuning",
    description="Minimizes answer-token NLL on the given set.",
    hyperparameters=FinetuneHyperparameters,
    forget_term=_descent_term,
)


def finetune(
    model,
    tokenizer,
    examples,
    hparams: FinetuneHyperparameters,
    *,
    seed: int = 0,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    return run_training(
        model, tokenizer, examples, None, FINETUNE, hparams, seed=seed, callbacks=callbacks
    )
