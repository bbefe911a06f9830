"""Cursor pagination over time-ordered ids: the cursor is the last id of the previous
page, so a page is one index range scan however deep the client has paged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


@dataclass
class Page(Generic[T]):
    items: Sequence[T]
    has_more: bool


def paginate(
    session: Session,
    statement: Select,
    id_column: InstrumentedAttribute,
    *,
    after: str | int | None,
    limit: int,
    newest_first: bool = True,
) -> Page:
    """One page of ``statement`` ordered by ``id_column``; fetches one extra row to tell
    whether another page follows."""
    if after is not None:
        statement = statement.where(id_column < after if newest_first else id_column > after)
    statement = statement.order_by(id_column.desc() if newest_first else id_column.asc())
    statement = statement.limit(limit + 1)
    rows = list(session.scalars(statement))
    return Page(items=rows[:limit], has_more=len(rows) > limit)
