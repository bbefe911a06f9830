"""Holdout records the job trains on are not unseen data (core.data.holdout)."""

from __future__ import annotations

from core.data.holdout import overlap_message, unseen_part
from core.data.records import Record, RecordSet


def records(*pairs, name="set.jsonl"):
    rows = [Record(prompt=q, answer=a, line=i + 1) for i, (q, a) in enumerate(pairs)]
    return RecordSet(name, "jsonl", "qa", rows, sha256="0" * 64, size_bytes=0, columns=[])


def test_records_in_the_forget_or_retain_set_are_left_out_up_to_whitespace():
    holdout = records(("Who?", "Ann."), ("Where?", "Rome."), ("When?", "1990."))
    forget = records(("Who?  ", "Ann."))
    retain = records(("When?", " 1990. "), ("Who?", "Bob."))  # same question, other answer
    kept, dropped = unseen_part(holdout, forget, retain)
    assert dropped == 2
    assert [(r.prompt, r.answer) for r in kept.records] == [("Where?", "Rome.")]
    assert len(holdout.records) == 3  # the caller's set is not changed


def test_a_disjoint_holdout_is_returned_as_is_and_an_absorbed_one_as_none():
    holdout = records(("Where?", "Rome."))
    assert unseen_part(holdout, records(("Who?", "Ann.")), None) == (holdout, 0)
    assert unseen_part(holdout, holdout) == (None, 1)
    assert unseen_part(None, holdout) == (None, 0)


def test_the_message_says_how_many_and_what_follows():
    assert overlap_message(2, 10).startswith("2 of 10 holdout records are also in the forget")
    assert "compares with the other 8" in overlap_message(2, 10)
    assert "cannot be verified" in overlap_message(10, 10)
