"""LoKU, Low-rank Knowledge Unlearning (Cha et al., ICLR 2025, arXiv 2408.06621): the
inverted hinge loss on forget answers plus the retain NLL, 1:1.

    IHL_t = max(0, 1 + p(y_t) - max_{v != y_t} p(v)),   p = softmax(logits_t)
    L_LoKU = mean over forget answer tokens of IHL_t  +  NLL(retain)

IHL lowers the true token's probability and raises its strongest rival's, so the model
moves the probability to a plausible other token instead of spreading it over the
vocabulary as gradient ascent does, which keeps generations fluent.

Note on the clip: since ``max_{v != y} p(v) <= 1``, the argument is always at least
``p(y_t) > 0``: the hinge never clips and the gradient never becomes zero, not even
once another token has overtaken the true one. It does shrink there: the gradient with
respect to the logits is ``p_y (e_y - p) - p_m (e_m - p)`` (m the strongest rival),
which vanishes only as p_y and p_m both leave the top.

Its companion is a LoRA initialisation, FILA (``lora.init: "fila"``,
core/training/fila.py), usable with any method; LoKU with LoRA is the recommended
method when a job asks for adapters. Defaults for 7B: LoRA r 32, alpha 64, lr 1e-4,
5 epochs. Per-sample gradient weights do not apply (the loss is per token).
"""

from __future__ import annotations

from pydantic import Field

from core.methods.base import ForgetInputs, LossTerm, Method, UnlearningHyperparameters


class LoKUHyperparameters(UnlearningHyperparameters):
    epochs: int = Field(5, ge=1, le=1000, description="Passes over the forget set (paper: 5).")


def inverted_hinge_loss(logits, labels):
    """Mean inverted hinge loss over answer tokens.

    ``logits [B, T, V]`` are already aligned with ``labels [B, T]`` (position t scores
    label t; no shift here); labels -100 are ignored.
    """
    per_sequence, n_tokens = _ihl_per_sequence(logits, labels)
    return per_sequence.sum() / n_tokens.sum().clamp_min(1)


def _ihl_per_sequence(logits, labels):
    """``(sum of IHL over answer tokens [B], answer tokens [B])``, logits aligned."""
    import torch

    from core.data.encoding import IGNORE_INDEX

    probs = torch.softmax(logits.float(), dim=-1)
    mask = labels != IGNORE_INDEX
    targets = labels.masked_fill(~mask, 0).unsqueeze(-1)
    p_true = probs.gather(-1, targets).squeeze(-1)
    p_rival = probs.scatter(-1, targets, float("-inf")).max(dim=-1).values
    hinge = torch.clamp(1 + p_true - p_rival, min=0)
    return (hinge * mask).sum(dim=1), mask.sum(dim=1)


def forget_term(inputs: ForgetInputs, hparams) -> LossTerm:
    if inputs.logits is None or inputs.labels is None:
        raise ValueError("LoKU needs the forget batch's logits and labels")
    # Causal LM: the logits at t predict token t+1.
    per_sequence, n_tokens = _ihl_per_sequence(inputs.logits[:, :-1], inputs.labels[:, 1:])
    return LossTerm(per_sequence=per_sequence, reduction="token", n_tokens=n_tokens)


METHOD = Method(
    name="loku",
    title="LoKU (inverted hinge loss)",
    description="Inverted hinge loss on forget answers plus retain NLL; with LoRA and "
    'lora.init "fila", the recommended method for adapters.',
    hyperparameters=LoKUHyperparameters,
    forget_term=forget_term,
    paper="arXiv:2408.06621",
)
