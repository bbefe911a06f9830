"""Holdout groups the size of the forget set, whole subjects at a time."""

from __future__ import annotations

from core.data.records import Record
from core.evaluation.holdout_groups import record_subjects, subject_groups


def test_groups_are_disjoint_whole_subjects_of_the_forget_size():
    subjects = [s for s in "abcdefghi" for _ in range(4)]  # nine subjects of four
    groups = subject_groups(subjects, len(subjects), 8, seed=3)
    assert len(groups) == 36 // 8 == 4
    assert all(len(g) == 8 for g in groups)
    flat = [i for g in groups for i in g]
    assert len(set(flat)) == len(flat)
    for group in groups:  # two whole subjects each
        names = [subjects[i] for i in group]
        assert len(set(names)) == 2 and all(names.count(n) == 4 for n in names)
    assert len(subject_groups(subjects, 36, 8, seed=3, max_groups=2)) == 2


def test_a_holdout_no_larger_than_the_forget_set_is_one_group():
    assert subject_groups(["a", "a", "b"], 3, 3) == [[0, 1, 2]]
    assert subject_groups(None, 3, 10) == [[0, 1, 2]]


def test_without_subjects_the_groups_are_a_seeded_sample():
    first = subject_groups(None, 20, 5, seed=1)
    assert first == subject_groups([None] * 20, 20, 5, seed=1)
    assert len(first) == 4 and first != [list(range(k, k + 5)) for k in range(0, 20, 5)]
    assert subject_groups(None, 20, 5, seed=2) != first


def test_record_subjects_only_when_a_record_names_one():
    plain = [Record(prompt="q", answer="a", line=1)]
    assert record_subjects(plain) is None
    named = plain + [Record(prompt="q", answer="a", line=2, meta={"subject": "Ann"})]
    assert record_subjects(named) == [None, "Ann"]
