"""JSON values that every backend stores: Postgres' JSONB rejects NaN and Infinity,
which a diverging loss produces, so they are stored as null."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value
