"""Query parameters shared by list endpoints.

Every cursor is bounded by the column it is compared with: a value the column cannot
hold is a 422 from the parameter's own validation (and stated in the OpenAPI
document), never a database error. New cursors use :func:`Cursor` (integer ids and
steps) or :data:`After` (string ids) so the rule lives here only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query

from api.services.idempotency import (
    IDEMPOTENCY_KEY_PATTERN,
    IDEMPOTENCY_KEY_RULE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
)
from core.db.ids import ID_PATTERN
from core.db.types import ID_MAX_LENGTH, integer_range

#: A cursor is an id; the pattern keeps arbitrary text (NUL bytes) away from the
#: database, and the length is the id columns'.
After = Annotated[
    str | None,
    Query(
        pattern=ID_PATTERN.pattern,
        max_length=ID_MAX_LENGTH,
        description="Last id of the previous page (`last_id`).",
    ),
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")]


def Cursor(column, description: str, *, ge: int = 0) -> Any:  # noqa: N802 - a type
    """An optional integer cursor compared with ``column``: at least ``ge``, at most the
    largest value the column holds (``integer_range``), e.g.
    ``after: Cursor(JobEvent.id, "Last event id seen.") = None``."""
    _, highest = integer_range(column)
    return Annotated[int | None, Query(ge=ge, le=highest, description=description)]


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        description=f"Makes retries safe: {IDEMPOTENCY_KEY_RULE}, e.g. a UUID. The same key "
        "with the same body answers 200 with what the first request made; with another "
        "body, 409 `idempotency_key_reused`.",
    ),
]
