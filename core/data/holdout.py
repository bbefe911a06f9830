"""The holdout set stands for data the model never saw; keep it that way.

The verdict calls a forget set forgotten when the model treats it like the holdout set.
A holdout record that the job also trains on (it is in the forget or retain set) is data
the model has seen: it moves the yardstick of "unseen" towards "trained", and an
unlearned model could then pass by resembling trained data. Such records are left out
of the holdout set, and the job says how many.

(The same rule covers training objectives: nothing a job optimizes may look at the
holdout set. bench/forget_objectives.py shows why: an objective whose per-token
reference came from the model's predictions for holdout authors' names passed the
verdict at oracle forget quality 0.002-0.007; docs/verdict.md.)
"""

from __future__ import annotations

from dataclasses import replace

from core.data.records import Record, RecordSet


def _key(record: Record) -> tuple[str, str]:
    return " ".join((record.prompt or "").split()), " ".join(record.answer.split())


def unseen_part(
    holdout: RecordSet | None, *trained: RecordSet | None
) -> tuple[RecordSet | None, int]:
    """The holdout records that none of ``trained`` holds (same prompt and answer, up to
    whitespace), and how many were left out; None when none is left."""
    if holdout is None:
        return None, 0
    seen = {_key(r) for records in trained if records is not None for r in records.records}
    kept = [r for r in holdout.records if _key(r) not in seen]
    dropped = len(holdout.records) - len(kept)
    if not dropped:
        return holdout, 0
    return (replace(holdout, records=kept) if kept else None), dropped


def overlap_message(dropped: int, total: int) -> str:
    left = total - dropped
    return (
        f"{dropped} of {total} holdout records are also in the forget or retain set (the "
        "model trains on them, so they are not unseen data): "
        + (
            f"left out; the verdict compares with the other {left}"
            if left
            else "none is left, so forgetting cannot be verified"
        )
    )


def unseen_holdout(
    holdout: RecordSet | None, forget: RecordSet | None, retain: RecordSet | None
) -> tuple[RecordSet | None, str | None]:
    """``unseen_part`` of the holdout against the job's training sets, and the note the
    job warns with (and the verdict gives when nothing is left) when records were left
    out."""
    kept, dropped = unseen_part(holdout, forget, retain)
    return kept, (overlap_message(dropped, len(holdout.records)) if dropped else None)
