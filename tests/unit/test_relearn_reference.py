"""The relearning check's reference: which holdout records its attacks use (groups of as
many records as the forget set, whole subjects at a time), and that it leaves the model
as it was."""

from __future__ import annotations

import torch

from core.data.encoding import encode_record_set
from core.data.records import Record, RecordSet, read_records
from core.evaluation.relearn import (
    REFERENCE_GROUPS,
    _reference_groups,
    relearn_probability,
    relearning_check_of,
)
from core.models.loading import load_model
from core.spec import DEFAULT_PROMPT_TEMPLATE


def holdout(subjects: list[str | None]) -> RecordSet:
    rows = [
        Record(
            prompt=f"q{i}",
            answer=f"a{i}",
            line=i + 1,
            meta={} if subject is None else {"subject": subject},
        )
        for i, subject in enumerate(subjects)
    ]
    return RecordSet("holdout", "jsonl", "qa", rows, sha256="0" * 64, size_bytes=0, columns=[])


def test_a_holdout_no_larger_than_the_forget_set_is_one_group_of_all():
    assert _reference_groups(holdout(["a", "a", "b"]), 3, seed=0) == [[0, 1, 2]]
    assert _reference_groups(holdout(["a", "a", "b"]), 10, seed=0) == [[0, 1, 2]]


def test_a_larger_holdout_gives_disjoint_groups_of_whole_subjects():
    records = holdout(["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4 + ["e"] * 4)
    for seed in range(5):
        groups = _reference_groups(records, 8, seed)
        # 20 records hold two groups of 8, each of two whole subjects, no record twice
        assert [len(g) for g in groups] == [8, 8], (seed, groups)
        assert not set(groups[0]) & set(groups[1])
        for group in groups:
            assert len({records.records[i].meta["subject"] for i in group}) == 2
    # the seed decides which subjects
    assert len({tuple(_reference_groups(records, 8, seed)[0]) for seed in range(10)}) > 1
    # at most REFERENCE_GROUPS groups, however large the holdout
    assert len(_reference_groups(records, 4, 0)) == REFERENCE_GROUPS == 3
    # a forget set that ends mid-subject cuts the groups mid-subject too
    assert [len(g) for g in _reference_groups(records, 6, 0)] == [6, 6, 6]


def test_records_without_a_subject_are_sampled_one_by_one():
    (group,) = _reference_groups(holdout([None] * 15), 5, seed=1)[:1]
    assert len(group) == 5 == len(set(group)) and group == sorted(group)


def test_both_attacks_leave_the_weights_as_they_were(tiny_demo):
    model, tokenizer = load_model(str(tiny_demo.retrain), dtype="fp32")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forget = encode_record_set(
        tokenizer,
        read_records(tiny_demo.data["forget10"]),
        max_length=512,
        template=DEFAULT_PROMPT_TEMPLATE,
    )
    kept = read_records(tiny_demo.data["holdout"])
    measured = relearn_probability(
        model,
        tokenizer,
        forget,
        kept,
        template=DEFAULT_PROMPT_TEMPLATE,
        max_length=512,
        steps=3,
        fraction=0.5,
        batch_size=4,
        learning_rate=1e-3,
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert 0 < measured.unseen < 1 and 0 < measured.holdout < 1 and 0 < measured.reference < 1
    # a holdout of one record cannot be split: no reference, the check says so
    one = RecordSet("one", kept.format, kept.kind, kept.records[:1], kept.sha256, 0, kept.columns)
    single = relearn_probability(
        model,
        tokenizer,
        forget,
        one,
        template=DEFAULT_PROMPT_TEMPLATE,
        max_length=512,
        steps=1,
        fraction=0.5,
        batch_size=4,
        learning_rate=1e-3,
    )
    assert single.reference is None
    assert "vs holdout probability" in relearning_check_of(single).label
