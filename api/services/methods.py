from __future__ import annotations

from functools import cache

from api.schemas.methods import MethodObject
from core.errors import NotFound
from core.methods import METHODS, get_method


@cache
def list_methods() -> list[MethodObject]:
    # Schemas are fixed for the life of the process: build them once.
    return [MethodObject.from_method(method) for method in METHODS.values()]


def get_method_object(name: str) -> MethodObject:
    if name not in METHODS:
        raise NotFound(
            f"no method {name!r}; choose one of {', '.join(METHODS)}",
            param="name",
            code="method_not_found",
        )
    return MethodObject.from_method(get_method(name))
