"""SimNPO (Fan et al., NeurIPS 2025, arXiv 2410.07163): NPO without the reference
model, with the log-likelihood normalized by answer length and a margin gamma.

    L_SimNPO = -(2/beta) E[ log sigma( beta * NLL_theta(y|x) / |y| - gamma ) ]

Its gradient is gradient ascent on ``NLL`` re-weighted per sample by
``w = (2/|y|) sigma(gamma - beta * NLL/|y|)``, bounded by ``2/|y|``: long answers are not
over-forgotten and short ones not under-forgotten, which is the paper's point.
One public implementation writes ``beta * (avgNLL - delta)``; its delta is gamma/beta.
"""

from __future__ import annotations

from pydantic import Field

from core.methods.base import ForgetInputs, LossTerm, Method, UnlearningHyperparameters


class SimNPOHyperparameters(UnlearningHyperparameters):
    beta: float = Field(2.5, gt=0, le=100, description="Inverse temperature (TOFU forget05: 2.5).")
    gamma: float = Field(0.0, ge=-100, le=100, description="Reward margin.")
    forget_coeff: float = Field(0.125, ge=0, le=1000, description="Weight of the forget loss.")


def forget_loss(nll, n_tokens, beta: float, gamma: float = 0.0):
    """Batch-mean SimNPO loss from per-sequence summed NLLs and answer lengths."""
    return _simnpo_term(nll, n_tokens, beta, gamma).mean()


def _simnpo_term(nll, n_tokens, beta: float, gamma: float) -> LossTerm:
    import torch
    import torch.nn.functional as F

    length = n_tokens.to(nll.dtype)
    margin = beta * nll / length - gamma
    per_sequence = -(2.0 / beta) * F.logsigmoid(margin)
    weight = (2.0 / length) * torch.sigmoid(-margin)
    return LossTerm(
        per_sequence=per_sequence,
        reduction="sequence",
        gradient_weight=weight.detach(),
    )


def forget_term(inputs: ForgetInputs, hparams: SimNPOHyperparameters) -> LossTerm:
    return _simnpo_term(inputs.nll, inputs.n_tokens, hparams.beta, hparams.gamma)


METHOD = Method(
    name="simnpo",
    title="SimNPO",
    description="Reference-free, length-normalized NPO (the default method).",
    hyperparameters=SimNPOHyperparameters,
    forget_term=forget_term,
    paper="arXiv:2410.07163",
)
