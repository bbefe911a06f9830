"""Gradient difference (GradDiff): gradient ascent on the forget set plus NLL on the
retain set, ``forget_coeff * GA + retain_coeff * retain NLL``."""

from __future__ import annotations

from core.methods import ga
from core.methods.base import Method, UnlearningHyperparameters


class GradDiffHyperparameters(UnlearningHyperparameters):
    pass


METHOD = Method(
    name="graddiff",
    title="Gradient difference",
    description="Gradient ascent on the forget set, descent on the retain set.",
    hyperparameters=GradDiffHyperparameters,
    forget_term=ga.forget_term,
)
