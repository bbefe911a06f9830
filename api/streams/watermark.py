"""Reading an append-only table in id order while transactions commit out of it.

Two transactions that insert into one table get ids 10 and 11; if 11 commits first, a
reader that saw 11 and moved on to ``id > 11`` never sees 10. So the reader keeps a
*settled* position (every id up to it was delivered or given up on), holds back rows
above a gap, and asks again for the missing ids. A gap that stays empty for
``gap_timeout_s`` is skipped: a rolled-back insert never fills it. In order delivery is
what makes a stream's position one number per table, and Last-Event-ID exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a missing id is waited for. Transactions that insert stream rows are short
#: (a batch of metrics, an event and a status change), so a gap older than this is a
#: rollback; waiting longer only delays everything behind it.
GAP_TIMEOUT_S = 2.0
#: A jump larger than this (a sequence moved by hand, ids burnt after a crash) is not
#: waited for id by id: the ids it skips are taken as never coming.
MAX_GAP = 10_000


class IdWatermark:
    def __init__(
        self,
        settled: int,
        *,
        gap_timeout_s: float = GAP_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        #: every id <= settled was delivered (or its gap expired)
        self.settled = settled
        #: the highest id read so far: the next read asks for ids above it
        self.highest = settled
        self.gap_timeout_s = gap_timeout_s
        self.clock = clock
        self._held: dict[int, Any] = {}
        self._gaps: dict[int, float] = {}

    @property
    def missing(self) -> list[int]:
        """Ids below ``highest`` not seen yet: ask for them again."""
        return sorted(self._gaps)

    def add(self, rows: Iterable[T], id_of: Callable[[T], int] = lambda row: row.id) -> list[T]:
        """Take rows read with ``id > highest`` or ``id in missing``; return those now
        deliverable, in id order."""
        now = self.clock()
        released: list[Any] = []
        for row in sorted(rows, key=id_of):
            row_id = id_of(row)
            if row_id <= self.settled or row_id in self._held:
                continue
            if row_id - self.highest > MAX_GAP:
                released += self._give_up_gaps()
                self.settled = self.highest = row_id - 1
            self._held[row_id] = row
            self._gaps.pop(row_id, None)
            for gap in range(self.highest + 1, row_id):
                self._gaps[gap] = now
            self.highest = max(self.highest, row_id)
        return released + self._release(now)

    def _give_up_gaps(self) -> list[Any]:
        """Everything held, in order, as if every gap had expired."""
        released = [self._held.pop(row_id) for row_id in sorted(self._held)]
        self._gaps.clear()
        self.settled = self.highest
        return released

    def _release(self, now: float) -> list[Any]:
        released = []
        while self.settled < self.highest:
            following = self.settled + 1
            if following in self._held:
                released.append(self._held.pop(following))
            elif now - self._gaps.get(following, -math.inf) >= self.gap_timeout_s:
                self._gaps.pop(following, None)
            else:
                break
            self.settled = following
        return released
