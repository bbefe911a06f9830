"""Telling a run that diverged from one that is merely unlearning, and saying why a run
blew up in terms of what it used. Pure functions of numbers and hyperparameters.

Unlearning pushes the forget-set likelihood down, so a rising loss is not a failure by
itself: gradient ascent's loss (minus the answer NLL per token) has no lower bound. But
every logged loss term is a per-token log-likelihood quantity (or, for NPO, a
per-sequence one bounded by the reference model's), and uniform guessing costs under 12
nats per token for any real vocabulary. A term a hundred times larger than it started,
and past a thousand nats, means probabilities of e^-1000: the logits have blown up and
the weights with them (learning rate 1.0 without clipping takes the demo's GA loss to
-1.3e6 within a few steps). Such a run must not end ``succeeded``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: A term is diverged past ``max(DIVERGED_ABS, DIVERGED_GROWTH * |its first value|)``.
DIVERGED_ABS = 1e3
DIVERGED_GROWTH = 100.0
LOSS_TERMS = ("loss", "forget_loss", "retain_loss")


def divergence(step: Mapping[str, float | None], first: Mapping[str, float | None]) -> str | None:
    """Why the run diverged at ``step`` (a step's logged values: ``loss``,
    ``forget_loss``, ``retain_loss``), compared with the first step's; None if it
    did not."""
    for term in LOSS_TERMS:
        value, start = step.get(term), first.get(term)
        if value is None or not math.isfinite(value):
            continue  # non-finite values stop the run before the update, elsewhere
        bound = max(DIVERGED_ABS, DIVERGED_GROWTH * abs(start or 0.0))
        if abs(value) > bound:
            return f"{term} reached {value:.4g} (it was {start:.4g} at the first step)"
    return None


def run_settings(hparams, method_name: str, precision_used: str) -> str:
    """What the run used, as a clause: precision, learning rate, clipping, and the
    method's own hyperparameters (those beyond the shared ones)."""
    from core.methods.base import UnlearningHyperparameters

    own = [
        name
        for name in type(hparams).model_fields
        if name not in UnlearningHyperparameters.model_fields
    ]
    parts = [
        f"precision {precision_used}",
        f"learning_rate {_show(hparams.learning_rate)}",
        "no gradient clipping (max_grad_norm null)"
        if not hparams.max_grad_norm
        else f"max_grad_norm {hparams.max_grad_norm:g}",
        *(f"{name} {_show(getattr(hparams, name))}" for name in own),
    ]
    return f"{method_name} with " + ", ".join(parts)


def likely_causes(hparams, precision_used: str) -> str:
    """The hyperparameters that can make a loss blow up, for this run."""
    from core.methods.base import UnlearningHyperparameters

    own = [
        name
        for name in type(hparams).model_fields
        if name not in UnlearningHyperparameters.model_fields
        and isinstance(getattr(hparams, name), float)
    ]
    causes = ["lower learning_rate"]
    if not hparams.max_grad_norm:
        causes.append("set max_grad_norm (e.g. 1.0)")
    if own:
        causes.append(f"check the method's {' and '.join(own)}")
    if precision_used != "fp32":
        causes.append("or train in precision fp32")
    return "; ".join(causes)


def precision_used(precision: str, mixed_precision: str) -> str:
    """The precision a run actually trained in: ``fp32``, ``bf16``, ``fp16`` (mixed, over
    fp32 weights) or ``bf16-pure``."""
    if precision == "bf16-pure":
        return "bf16-pure"
    return "fp32" if mixed_precision == "no" else mixed_precision


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_step(values, first_values, hparams, method_name: str, mixed_precision: str, step: int):
    """Raise :class:`~core.errors.Diverged` if the step's losses say the run diverged."""
    from core.errors import Diverged

    reason = divergence(values, first_values)
    if reason is not None:
        used = precision_used(hparams.precision, mixed_precision)
        raise Diverged(
            f"training diverged at step {step}: {reason}. The run used "
            f"{run_settings(hparams, method_name, used)}; {likely_causes(hparams, used)}",
            param="hyperparameters",
        )


def non_finite_message(what: str, hparams, method_name: str, mixed_precision: str) -> str:
    """The message of a NonFiniteLoss: what was non-finite, what the run used, and
    which of its hyperparameters can cause it."""
    used = precision_used(hparams.precision, mixed_precision)
    return (
        f"{what}; the run used {run_settings(hparams, method_name, used)}: "
        f"{likely_causes(hparams, used)}"
    )
