"""Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868).

    L_NPO = -(2/beta) E[ log sigma( beta (NLL_theta(y|x) - NLL_ref(y|x)) ) ]

with NLL summed over answer tokens and ref = the model before unlearning. Its
gradient is gradient ascent re-weighted per sample by
``w = 2 sigma(-beta (NLL_theta - NLL_ref)) = 2 p^beta / (p^beta + p_ref^beta)``: 1 at
the start, shrinking as a sample is forgotten, so the loss is bounded and collapse is
slow. The reference NLLs never change, so the loop computes them once before training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.methods.base import (
    ForgetInputs,
    LossTerm,
    Method,
    UnlearningHyperparameters,
    one_term_forget_tokens,
)


class NPOHyperparameters(UnlearningHyperparameters):
    beta: float = Field(
        0.1, gt=0, le=100, description="Inverse temperature of the preference loss."
    )
    forget_tokens: Literal["answer", "facts"] = one_term_forget_tokens()


def forget_loss(nll, ref_nll, beta: float):
    """Batch-mean NPO loss from per-sequence summed NLLs (shape ``[B]``)."""
    return _npo_term(nll, ref_nll, beta).mean()


def _npo_term(nll, ref_nll, beta: float) -> LossTerm:
    import torch
    import torch.nn.functional as F

    log_ratio = nll - ref_nll  # = log p_ref - log p_theta
    per_sequence = -(2.0 / beta) * F.logsigmoid(beta * log_ratio)
    weight = 2.0 * torch.sigmoid(-beta * log_ratio)
    return LossTerm(
        per_sequence=per_sequence,
        reduction="sequence",
        gradient_weight=weight.detach(),
    )


def forget_term(inputs: ForgetInputs, hparams: NPOHyperparameters) -> LossTerm:
    if inputs.ref_nll is None:
        raise ValueError("NPO needs the reference model's NLL on the forget batch")
    return _npo_term(inputs.nll, inputs.ref_nll, hparams.beta)


METHOD = Method(
    name="npo",
    title="Negative Preference Optimization",
    description="Bounded, reference-relative loss; forget weights shrink as samples are forgotten.",
    hyperparameters=NPOHyperparameters,
    forget_term=forget_term,
    needs_reference_nll=True,
    paper="arXiv:2404.05868",
)
