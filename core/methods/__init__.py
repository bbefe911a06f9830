"""The registry of unlearning methods, by name. One module per method.

Adding a method: write ``core/methods/<name>.py`` with a hyperparameter schema, a pure
``forget_loss`` and ``METHOD = Method(...)``, then list the module below.

``LISTED_METHODS`` is what a job's ``method`` may name and GET /v1/methods lists: the
training methods, then GUARD (``core.methods.guard_spec``), whose output is a guard
applied at decoding time rather than new weights.
"""

from __future__ import annotations

from core.errors import InvalidRequest
from core.methods import flat, ga, graddiff, loku, npo, rmu, simnpo
from core.methods.base import OUTPUT_DESCRIPTIONS, Method, UnlearningHyperparameters
from core.methods.guard_spec import GUARD, GuardMethod

DEFAULT_METHOD = "simnpo"

METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (simnpo, npo, graddiff, ga, flat, loku, rmu)
}
#: every method a job may name, as GET /v1/methods and ``obliviate methods`` list them
LISTED_METHODS: dict[str, Method | GuardMethod] = {**METHODS, GUARD.name: GUARD}


def get_method(name: str) -> Method:
    """The training method ``name``; a job naming GUARD is routed before this
    (``core.spec``, ``core.pipeline``), since a guard has no loss to train with."""
    try:
        return METHODS[name]
    except KeyError:
        if name == GUARD.name:
            raise InvalidRequest(
                f"method {name!r} builds a guard, not weights: it is not a training method",
                param="method",
                code="unknown_method",
            ) from None
        raise InvalidRequest(
            f"unknown method {name!r}; choose one of {', '.join(LISTED_METHODS)}",
            param="method",
            code="unknown_method",
        ) from None


__all__ = [
    "DEFAULT_METHOD",
    "LISTED_METHODS",
    "METHODS",
    "OUTPUT_DESCRIPTIONS",
    "GuardMethod",
    "Method",
    "UnlearningHyperparameters",
    "get_method",
]
