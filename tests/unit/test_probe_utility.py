"""The verdict probe's utility estimate: a quick prefix of the retain and utility
samples, confirmed on the rest, always against the original's scores on the same
records (values derived by hand)."""

from __future__ import annotations

import pytest

from core.data.records import RecordSet
from core.evaluation.probe import Probe, ProbeSets, split_utility_sets, utility_stages


def records(name: str, n: int) -> RecordSet:
    return RecordSet(
        name=name,
        format="jsonl",
        kind="qa",
        records=[f"{name}-{i}" for i in range(n)],  # only counted and sliced here
        sha256="0" * 64,
        size_bytes=0,
        columns=["question", "answer"],
    )


def test_split_keeps_order_and_leaves_small_sets_whole():
    sets = ProbeSets(
        forget=records("forget", 5),
        retain=records("retain", 40),
        utility={"facts": records("facts", 10), "world": records("world", 33)},
    )
    quick, rest = split_utility_sets(sets, 32)
    assert quick.forget is None and rest.forget is None
    assert quick.retain.records == [f"retain-{i}" for i in range(32)]
    assert rest.retain.records == [f"retain-{i}" for i in range(32, 40)]
    assert len(quick.utility["facts"]) == 10 and "facts" not in rest.utility
    assert rest.utility["world"].records == ["world-32"]


def test_nothing_to_confirm_when_every_set_fits():
    quick, rest = split_utility_sets(ProbeSets(forget=None, retain=records("retain", 32)), 32)
    assert len(quick.retain) == 32 and rest is None


def test_ratio_compares_the_same_records():
    # The original: 0.8 on the first 32 retain records, 0.4 on the 8 after them.
    original = Probe(columns={"retain": {"probability": [0.8] * 32 + [0.4] * 8}})
    quick = Probe(columns={"retain": {"probability": [0.6] * 32}}, seconds=1.0)
    rest = Probe(columns={"retain": {"probability": [0.4] * 8}}, seconds=0.5)

    # Quick: 0.6 / 0.8 = 0.75, not 0.6 / 0.72 (the original's mean over all 40).
    assert quick.utility() / original.prefix_like(quick).utility() == pytest.approx(0.75)
    both = quick.extended(rest)
    assert both.seconds == pytest.approx(1.5)
    # All 40: (32 * 0.6 + 8 * 0.4) / 40 = 0.56 against 0.72.
    assert both.utility() / original.prefix_like(both).utility() == pytest.approx(0.56 / 0.72)


def test_rouge_counts_only_where_both_sides_measured_it():
    # The original was answered (ROUGE) on all 4 records; a quick estimate was not: it is
    # compared with the original's generation-free components only.
    original = Probe(columns={"retain": {"probability": [0.8] * 4, "rouge_recall": [1.0] * 4}})
    quick = Probe(columns={"retain": {"probability": [0.6] * 4}})
    assert quick.utility() / original.prefix_like(quick).utility() == pytest.approx(0.75)
    # Confirmed with ROUGE (0.9 on every answer): harmonic means of (0.6, 0.9) and
    # (0.8, 1.0): 2 / (1/0.6 + 1/0.9) = 0.72 against 2 / (1/0.8 + 1/1.0) = 0.8889.
    answered = Probe(columns={"retain": {"probability": [0.0] * 4, "rouge_recall": [0.9] * 4}})
    confirmed = quick.with_columns(answered, ("rouge_recall",))
    assert confirmed.columns["retain"]["probability"] == [0.6] * 4  # only ROUGE was taken
    ratio = confirmed.utility() / original.prefix_like(confirmed).utility()
    assert ratio == pytest.approx(0.72 / (2 / (1 / 0.8 + 1)))
    assert ratio > 0.75  # ROUGE that hardly moved pulls the ratio towards 1


def test_utility_stages_cover_each_set_once_in_order():
    sets = ProbeSets(
        forget=records("forget", 5),
        retain=records("retain", 400),
        utility={"facts": records("facts", 100), "world": records("world", 20)},
    )
    quick, confirm, edge = utility_stages(sets, 32, 128)
    assert quick.retain.records == [f"retain-{i}" for i in range(32)]
    assert confirm.retain.records == [f"retain-{i}" for i in range(32, 128)]
    assert edge.retain.records == [f"retain-{i}" for i in range(128, 400)]
    assert confirm.utility["facts"].records == [f"facts-{i}" for i in range(32, 100)]
    assert "facts" not in edge.utility and "world" not in confirm.utility
    assert utility_stages(ProbeSets(forget=None, retain=records("r", 20)), 32, 128)[1:] == (
        None,
        None,
    )
    _, confirm, edge = utility_stages(ProbeSets(forget=None, retain=records("r", 100)), 32, 128)
    assert len(confirm.retain) == 68 and edge is None


def test_parts_name_the_component_that_fell():
    # The original: retain probability 0.8, world-facts probability 0.5 and truth ratios
    # 0.2 and 0.4 (retain score mean(1 - tr) = 0.7); the model kept its retain
    # probability on the same records and lost world facts: probability 0.25 and truth
    # ratios 0.7 and 0.9 (score 0.2).
    original = Probe(
        columns={
            "retain": {"probability": [0.8] * 4 + [0.1] * 4},
            "utility/world": {"probability": [0.5, 0.5], "truth_ratio": [0.2, 0.4]},
        }
    )
    model = Probe(
        columns={
            "retain": {"probability": [0.8] * 4},
            "utility/world": {"probability": [0.25, 0.25], "truth_ratio": [0.7, 0.9]},
        }
    )
    assert model.utility_parts(original) == pytest.approx(
        {
            "retain/probability": 1.0,  # its first 4 records, not the original's 0.45 mean
            "utility/world/probability": 0.5,
            "utility/world/truth_ratio": 0.2 / 0.7,
        }
    )


def test_weights_are_each_values_share_of_the_harmonic_mean():
    from core.evaluation.metrics import utility_weights

    # 1/1 and 1/0.25 over their sum 5: a score near 0 carries most of model utility
    weights = utility_weights({"retain": {"probability": 1.0, "truth_ratio": 0.25}})
    assert weights == pytest.approx({"retain/probability": 0.2, "retain/truth_ratio": 0.8})
