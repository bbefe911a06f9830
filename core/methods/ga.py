"""Gradient ascent (GA): push the forget-set likelihood down, without bound.

forget loss = -(mean answer-token NLL over the forget batch). Minimizing it raises the
NLL without limit, which is why GA collapses the model when run long enough; it is the
baseline NPO and SimNPO improve on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.methods.base import ForgetInputs, LossTerm, Method, UnlearningHyperparameters


class GAHyperparameters(UnlearningHyperparameters):
    retain_loss: Literal["nll", "kl", "none"] = Field("none", description="Retain term.")
    retain_coeff: float = Field(0.0, ge=0, le=1000, description="Weight of the retain loss.")


def forget_loss(nll, n_tokens):
    """``-sum(nll) / sum(n_tokens)``: the negated token-mean NLL of the batch."""
    return forget_term(ForgetInputs(nll=nll, n_tokens=n_tokens), None).mean()


def forget_term(inputs: ForgetInputs, hparams) -> LossTerm:
    n_tokens = inputs.n_tokens.to(inputs.nll.dtype)
    # d(loss)/d(nll_i) = -1/sum(n): relative to the per-sequence mean of -grad(nll_i),
    # each sample is weighted B/sum(n) = 1/mean(n).
    weight = (1.0 / n_tokens.mean()).expand_as(n_tokens)
    return LossTerm(
        per_sequence=-inputs.nll,
        reduction="token",
        n_tokens=n_tokens,
        gradient_weight=weight.detach(),
    )


METHOD = Method(
    name="ga",
    title="Gradient ascent",
    description="Maximizes the forget-set NLL. Unbounded: a baseline that collapses utility.",
    hyperparameters=GAHyperparameters,
    forget_term=forget_term,
)
