"""Stream positions: rows committed out of id order are delivered in order, once; gaps
that never fill are skipped after a while; Last-Event-ID reads back what was written."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from api.streams.cursor import format_position, parse_position
from api.streams.watermark import MAX_GAP, IdWatermark
from core.errors import InvalidRequest


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows(*ids: int) -> list:
    return [SimpleNamespace(id=row_id) for row_id in ids]


def ids(released: list) -> list[int]:
    return [row.id for row in released]


def test_rows_behind_a_gap_wait_for_it_and_come_out_in_order():
    clock = FakeClock()
    mark = IdWatermark(10, gap_timeout_s=2.0, clock=clock)
    assert ids(mark.add(rows(11, 12))) == [11, 12]
    # 14 committed before 13: hold 14 back, ask for 13 again.
    assert ids(mark.add(rows(14))) == []
    assert mark.missing == [13] and mark.highest == 14 and mark.settled == 12
    clock.now = 1.0
    assert ids(mark.add(rows(13, 15))) == [13, 14, 15]
    assert mark.missing == [] and mark.settled == 15
    # Re-reads of delivered rows are ignored.
    assert ids(mark.add(rows(14, 15))) == []


def test_a_gap_that_never_fills_is_skipped_after_the_timeout():
    clock = FakeClock()
    mark = IdWatermark(0, gap_timeout_s=2.0, clock=clock)
    assert ids(mark.add(rows(1, 3, 4))) == [1]
    clock.now = 1.9
    assert ids(mark.add([])) == []
    clock.now = 2.0
    assert ids(mark.add([])) == [3, 4]
    assert mark.settled == 4 and mark.missing == []
    # A late row for a skipped id is not delivered out of order.
    assert ids(mark.add(rows(2))) == []


def test_a_huge_jump_is_not_waited_for_id_by_id():
    mark = IdWatermark(5, clock=FakeClock())
    assert ids(mark.add(rows(7))) == []
    jump = 7 + MAX_GAP + 5
    assert ids(mark.add(rows(jump))) == [7, jump]
    assert mark.settled == jump and mark.missing == []


def test_positions_round_trip_and_reject_garbage():
    kinds = ("job", "event", "metric")
    text = format_position({"event": 12, "metric": 3400, "job": 1733212345123456})
    assert parse_position(text, kinds) == {"event": 12, "metric": 3400, "job": 1733212345123456}
    # Kinds this server does not know are ignored; a missing kind starts from 0.
    assert parse_position("event=5, evaluation=9", kinds) == {"event": 5}
    assert parse_position("", kinds) == {}
    for bad in ("event", "event=-1", "event=1e3", "metric=" + "9" * 19, "event=x", "a=1,,b=2"):
        with pytest.raises(InvalidRequest) as error:
            parse_position(bad, kinds)
        assert error.value.param == "Last-Event-ID"
