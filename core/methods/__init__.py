"""The registry of unlearning methods, by name. One module per method.

Adding a method: write ``core/methods/<name>.py`` with a hyperparameter schema, a pure
``forget_loss`` and ``METHOD = Method(...)``, then list the module below.
"""

from __future__ import annotations

from core.errors import InvalidRequest
from core.methods import flat, ga, graddiff, loku, npo, simnpo
from core.methods.base import Method, UnlearningHyperparameters

DEFAULT_METHOD = "simnpo"

METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (simnpo, npo, graddiff, ga, flat, loku)
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown method {name!r}; choose one of {', '.join(METHODS)}",
            param="method",
            code="unknown_method",
        ) from None


__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "UnlearningHyperparameters", "get_method"]
