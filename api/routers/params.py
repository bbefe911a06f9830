"""Query parameters shared by list endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from core.db.ids import ID_PATTERN

#: A cursor is an id; the pattern keeps arbitrary text (NUL bytes) away from the database.
After = Annotated[
    str | None,
    Query(pattern=ID_PATTERN.pattern, description="Last id of the previous page."),
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")]
