"""Disjoint groups of holdout records the size of the forget set, whole subjects at a time.

The verdict compares the forget set with a holdout set. Where the holdout is larger, a
comparison with all of it is not the comparison its threshold was set on: a test of 120
forget records (ten authors, twelve questions each) against 360 holdout records, or
against 120 drawn from thirty authors, sees differences of shape that the retrain
oracle's own comparison (120 vs 120, ten authors a side) does not, and on the thirty-
author GPT-2 benchmark the knowledge test called no oracle-forgotten point forgotten
(docs/verdict.md). Both the knowledge test and the relearning reference therefore
compare the forget set with groups shaped like it (as many records, about as many per
subject) and average over the groups that fit.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def subject_groups(
    subjects: Sequence[object] | None,
    n_holdout: int,
    size: int,
    *,
    seed: int = 0,
    max_groups: int | None = None,
) -> list[list[int]]:
    """Disjoint, sorted index groups of ``size`` holdout records (one group of all when
    the holdout has no more than ``size``), at most ``max_groups``.

    ``subjects``: each record's subject (``None`` entries, or no list at all, make each
    record its own subject, so the groups are a seeded random sample). Subjects are taken
    whole in a seeded order, so a group cuts at most one subject at each end.
    """
    if n_holdout <= size or size < 1:
        return [list(range(n_holdout))]
    by_subject: dict[object, list[int]] = {}
    for i in range(n_holdout):
        subject = subjects[i] if subjects is not None else None
        by_subject.setdefault(("record", i) if subject is None else subject, []).append(i)
    blocks = list(by_subject.values())
    random.Random(seed).shuffle(blocks)
    order = [i for block in blocks for i in block]
    count = n_holdout // size
    if max_groups is not None:
        count = min(count, max_groups)
    return [sorted(order[k * size : (k + 1) * size]) for k in range(count)]


def record_subjects(records) -> list | None:
    """Each record's ``subject`` (None where it names none), or None when no record
    names one: the knowledge test groups holdout records by it."""
    subjects = [record.meta.get("subject") for record in records]
    return subjects if any(s is not None for s in subjects) else None
