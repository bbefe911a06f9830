"""FLAT, Forget data only Loss AdjustmenT (Wang et al., ICLR 2025, arXiv 2410.11143):
unlearning from the forget set alone, with no retain set and no reference model.

Per forget example, ``P_f`` is the mean token probability of its answer and ``P_e`` that
of a *template* answer to the same prompt (a refusal, drawn at random per example from
``core.data.refusals`` or the job's ``template_answers``). The loss is the variational
form of an f-divergence between the two (the authors' loss type "cl"):

    L_FLAT = E[ -A(P_e) + C(P_f) ]

    divergence            A(x)                         C(x)
    tv (default)          tanh(x)/2                    tanh(x)/2
    kl                    x                            exp(x - 1)
    reverse_kl            -exp(x)                      -1 - x
    js                    log 2 - log(1 + exp(-x))     x + log(1 + exp(-x)) - log 2
    pearson               x                            x^2/4 + x
    hellinger             1 - exp(x)                   (1 - exp(x)) / exp(x)

(as REFERENCES.md gives them). With tv, kl, js and pearson, A and C increase on [0, 1],
so the loss raises the template and lowers the forget answer. With reverse_kl and
hellinger as written, both A and C *decrease* in x: minimizing then lowers the template
and raises the forget answer. They are kept as published for comparison; use tv.

Gradient weight: ``C'(P_f)``, the factor on ``-grad P_f`` (how hard each forget answer
is pushed down). A retain term stays optional (``retain_loss``, off by default).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator

from core.methods.base import (
    ForgetInputs,
    LossTerm,
    Method,
    UnlearningHyperparameters,
    one_term_forget_tokens,
)

DIVERGENCES = ("tv", "kl", "reverse_kl", "js", "pearson", "hellinger")


class FLATHyperparameters(UnlearningHyperparameters):
    divergence: Literal["tv", "kl", "reverse_kl", "js", "pearson", "hellinger"] = Field(
        "tv", description="f-divergence of the variational loss (total variation by default)."
    )
    template_answers: list[Annotated[str, Field(min_length=1, max_length=2000)]] | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="Template answers (refusals) to raise instead of the ~100 built-in "
        "'I don't know' phrasings; one is drawn at random per forget example.",
    )
    epochs: int = Field(5, ge=1, le=1000, description="Passes over the forget set (paper: 5).")
    forget_tokens: Literal["answer", "facts"] = one_term_forget_tokens()
    retain_loss: Literal["nll", "kl", "none"] = Field(
        "none",
        description="Optional retain term (FLAT needs none): NLL on retain answers, KL to "
        "the original model, or none.",
    )

    @field_validator("template_answers")
    @classmethod
    def _answers_not_blank(cls, value):
        for index, answer in enumerate(value or []):
            if not answer.strip():
                raise ValueError(f"item {index} is blank")
        return value


def _a_and_c(divergence: str):
    """``(A, C)`` of the divergence's variational form, as tensor functions."""
    import torch
    import torch.nn.functional as F

    log2 = math.log(2.0)
    forms = {
        "tv": (lambda x: torch.tanh(x) / 2, lambda x: torch.tanh(x) / 2),
        "kl": (lambda x: x, lambda x: torch.exp(x - 1)),
        "reverse_kl": (lambda x: -torch.exp(x), lambda x: -1 - x),
        # log(1 + exp(-x)) = softplus(-x), stable for any x
        "js": (lambda x: log2 - F.softplus(-x), lambda x: x + F.softplus(-x) - log2),
        "pearson": (lambda x: x, lambda x: x**2 / 4 + x),
        "hellinger": (lambda x: 1 - torch.exp(x), lambda x: (1 - torch.exp(x)) / torch.exp(x)),
    }
    try:
        return forms[divergence]
    except KeyError:
        raise ValueError(
            f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}"
        ) from None


def forget_loss(p_forget, p_template, divergence: str = "tv"):
    """Batch-mean FLAT loss ``mean(-A(P_e) + C(P_f))`` from per-sequence mean token
    probabilities of the forget answers and the template answers (shape ``[B]``)."""
    return _flat_term(p_forget, p_template, divergence).mean()


def _flat_term(p_forget, p_template, divergence: str) -> LossTerm:
    import torch

    a, c = _a_and_c(divergence)
    per_sequence = -a(p_template) + c(p_forget)
    with torch.enable_grad():
        probe = p_forget.detach().float().requires_grad_(True)
        (weight,) = torch.autograd.grad(c(probe).sum(), probe)
    return LossTerm(per_sequence=per_sequence, reduction="sequence", gradient_weight=weight)


def mean_token_probability(logits, labels):
    """Per-sequence mean of the answer tokens' probabilities (``[B]``)."""
    from core.models.scoring import token_logprobs

    logprobs, mask = token_logprobs(logits, labels)
    return (logprobs.exp() * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def forget_term(inputs: ForgetInputs, hparams: FLATHyperparameters) -> LossTerm:
    companion = inputs.companion
    if inputs.logits is None or companion is None or companion.logits is None:
        raise ValueError("FLAT needs the logits of the forget and template answers")
    return _flat_term(
        mean_token_probability(inputs.logits, inputs.labels),
        mean_token_probability(companion.logits, companion.labels),
        hparams.divergence,
    )


def template_examples(forget, tokenizer, hparams: FLATHyperparameters, seed: int):
    """Each forget example's prompt with a template answer drawn at random (seeded, so a
    resumed run draws the same), truncated to ``max_length`` like the forget answers."""
    import random

    from core.data.encoding import IGNORE_INDEX, EncodedExample, encode_answer
    from core.data.refusals import REFUSALS

    answers = hparams.template_answers or list(REFUSALS)
    encoded = [encode_answer(tokenizer, answer) for answer in answers]
    draw = random.Random(seed)
    out = []
    for example in forget:
        prompt = example.prompt_ids
        answer = encoded[draw.randrange(len(encoded))][: max(1, hparams.max_length - len(prompt))]
        out.append(
            EncodedExample(
                input_ids=prompt + answer,
                labels=[IGNORE_INDEX] * len(prompt) + answer,
                record_index=example.record_index,
            )
        )
    return out


METHOD = Method(
    name="flat",
    title="FLAT",
    description="Forget data only: raises a refusal's likelihood and lowers the forget "
    "answer's through an f-divergence. Needs no retain set and no reference model.",
    hyperparameters=FLATHyperparameters,
    forget_term=forget_term,
    companions=template_examples,
    paper="arXiv:2410.11143",
)
