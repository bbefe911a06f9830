"""bench/truth_ratio_objective.py: wrong answers built from retained answers of the same
template, and ceilings matched by rank."""

from __future__ import annotations

import json
import random

import numpy as np

from core.data.records import Record
from tests.fixtures.bench import bench_module


def _author(subject: str, answer: str) -> Record:
    return Record(prompt="q", answer=answer, line=1, meta={"subject": subject})


def test_wrong_answers_swap_the_value_of_the_same_template_only():
    with bench_module("truth_ratio_objective.py") as script:
        record = _author("Ann Vo", "Ann Vo was born in the city of Vreves.")
        retained = [
            _author("Bo Ek", "Bo Ek was born in the city of Thukom."),
            _author("Cy Ra", "Cy Ra was born in the city of Old Port."),
            _author("Di Lo", "Di Lo was born in 1964."),  # another slot
            _author("Ed Fu", "Ed Fu was born in the city of Thukom."),  # the same value again
            _author("Fa Me", "Fa Me was born in the city of a b c d e."),  # too long a value
        ]
        wrong = script.wrong_answers(record, retained, 5, random.Random(0))
        assert sorted(wrong) == [
            "Ann Vo was born in the city of Old Port.",
            "Ann Vo was born in the city of Thukom.",
        ]
        assert len(script.wrong_answers(record, retained, 1, random.Random(0))) == 1


def test_each_forget_record_is_matched_to_the_reference_value_of_its_rank():
    with bench_module("truth_ratio_objective.py") as script:
        reference = np.array([-2.0, -1.0, 0.0, 1.0])
        # four records: quantiles 0.125, 0.375, 0.625, 0.875 of the reference, by rank
        expected = np.quantile(reference, [0.875, 0.125, 0.625, 0.375])
        ceilings = script.matched_ceilings(np.array([5.0, -3.0, 0.2, 0.1]), reference)
        assert np.allclose(ceilings, expected)
        # linear interpolation between -2 and -1 at position 0.375 of 3 gaps: -1.625
        assert np.isclose(ceilings[1], -1.625)


def test_both_objectives_run_an_epoch_on_the_tiny_demo(tiny_demo, tmp_path, capsys):
    cache = tiny_demo.root.parent  # the fixture's assets: the study finds them built
    preset = tiny_demo.root.name.removeprefix("demo-")
    out = tmp_path / "rows.jsonl"
    with bench_module("truth_ratio_objective.py") as script:
        common = ["--preset", preset, "--cache", str(cache), "--epochs", "1", "--out", str(out)]
        assert script.main(common) == 0
        assert script.main([*common, "--objective", "rmu", "--matched", "--subject-only"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["settings"]["objective"] for r in rows] == ["truth_ratio", "rmu"]
    for row in rows:
        assert 0 <= row["oracle_fq"] <= 1 and 0 <= row["membership_auc"] <= 1
        assert row["utility_ratio"] > 0
    assert "rmu: layer 2" in capsys.readouterr().out
