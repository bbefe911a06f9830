"""Forget quality against several oracles (``evaluation.oracle`` as a list): the
model's forget truth ratios against all the oracles' pooled, checked against exact
two-sample KS p-values counted over every arrangement of the labels, and the spec's
rules for the list."""

from __future__ import annotations

import json
from itertools import combinations

import pytest

from core.errors import InvalidRequest
from core.evaluation.evaluate import EvaluationResult, SetResult, compare
from core.spec import parse_job_spec
from tests.fixtures.models import TINY_PRESET, demo_job, recording_reporter


def exact_ks_p(ours: list[float], theirs: list[float]) -> float:
    """The share of all ways to split the pooled values into groups of these sizes whose
    largest ECDF gap is at least the observed one (the exact null of the two-sided test,
    no ties): counted, not taken from scipy."""

    def gap(first: set[int], values: list[float]) -> float:
        n, m = len(first), len(values) - len(first)
        seen_first = seen_second = 0
        largest = 0.0
        for position, _ in sorted(enumerate(values), key=lambda item: item[1]):
            if position in first:
                seen_first += 1
            else:
                seen_second += 1
            largest = max(largest, abs(seen_first / n - seen_second / m))
        return largest

    values = ours + theirs
    observed = gap(set(range(len(ours))), values)
    splits = [set(c) for c in combinations(range(len(values)), len(ours))]
    return sum(gap(split, values) >= observed - 1e-12 for split in splits) / len(splits)


def result(truth_ratios: list[float], sha: str = "forget-sha") -> EvaluationResult:
    forget = SetResult(
        role="forget",
        name="forget.jsonl",
        kind="qa",
        sha256=sha,
        n_records=len(truth_ratios),
        samples={"index": list(range(len(truth_ratios))), "truth_ratio": truth_ratios},
        aggregates={},
    )
    return EvaluationResult(sets={"forget": forget}, metrics={"model_utility": 0.5}, spec={})


OURS = [0.10, 0.20]
FIRST = [0.30, 0.40]
SECOND = [0.15, 0.50]


def test_the_counted_null_gives_the_textbook_values():
    # two against two, fully apart: 2 of the C(4,2) = 6 splits are as far apart
    assert exact_ks_p([0.1, 0.2], [0.3, 0.4]) == pytest.approx(2 / 6)
    # one against two, outside: the single value at either end, 2 of 3 splits
    assert exact_ks_p([0.1], [0.3, 0.4]) == pytest.approx(2 / 3)


def test_one_oracle_compares_with_its_truth_ratios_alone():
    comparison = compare(result([0.6, 0.7]), result(OURS), result(FIRST))
    assert comparison["forget_quality"] == pytest.approx(exact_ks_p(OURS, FIRST)) == 1 / 3
    assert "forget_quality_by_oracle" not in comparison
    assert comparison["models"]["oracle"]["forget_quality"] == 1.0


def test_several_oracles_pool_their_truth_ratios():
    before = result([0.6, 0.7])
    comparison = compare(before, result(OURS), result(FIRST), more_oracles=[result(SECOND)])
    pooled = exact_ks_p(OURS, FIRST + SECOND)
    # 0.10 0.15 0.20 0.30 0.40 0.50: after 0.20 ours are all seen, a quarter of theirs:
    # gap 3/4, reached by 6 of the C(6,2) = 15 splits
    assert pooled == pytest.approx(6 / 15)
    assert comparison["forget_quality"] == pytest.approx(pooled)
    assert comparison["forget_quality_before"] == pytest.approx(
        exact_ks_p([0.6, 0.7], FIRST + SECOND)
    )
    assert comparison["forget_quality_oracles"] == 2
    assert comparison["forget_quality_by_oracle"] == pytest.approx(
        [exact_ks_p(OURS, FIRST), exact_ks_p(OURS, SECOND)]
    )
    # the first oracle against the others: what never having seen the set scores here
    assert comparison["models"]["oracle"]["forget_quality"] == pytest.approx(
        exact_ks_p(FIRST, SECOND)
    )


def test_an_oracle_of_another_forget_set_is_left_out_of_the_pool():
    elsewhere = result(SECOND, sha="another-forget-set")
    comparison = compare(result([0.6, 0.7]), result(OURS), result(FIRST), more_oracles=[elsewhere])
    assert comparison["forget_quality"] == pytest.approx(exact_ks_p(OURS, FIRST))
    assert comparison["forget_quality_oracles"] == 1
    assert comparison["forget_quality_by_oracle"][1] is None
    assert comparison["models"]["oracle"]["forget_quality"] is None


SPEC = {"model": "m", "forget": "ds_f", "retain": "ds_r", "method": "simnpo"}


def test_the_spec_takes_one_oracle_or_a_list():
    one = parse_job_spec({**SPEC, "evaluation": {"oracle": "retrain"}}).evaluation
    assert (one.oracles, one.oracle_param(0)) == (["retrain"], "evaluation.oracle")
    several = parse_job_spec({**SPEC, "evaluation": {"oracle": ["a", "job:job_1"]}}).evaluation
    assert several.oracles == ["a", "job:job_1"]
    assert several.oracle_param(1) == "evaluation.oracle.1"
    assert parse_job_spec(SPEC).evaluation.oracles == []


@pytest.mark.parametrize(
    ("oracle", "message"),
    [
        ([], "give 1 to 8 oracles, not 0"),
        ([f"r{i}" for i in range(9)], "give 1 to 8 oracles, not 9"),
        (["a", "a"], "listed twice"),
        (["a", 3], "a list of such strings"),
        (5, "a list of such strings"),
    ],
)
def test_a_bad_oracle_list_names_the_field(oracle, message):
    with pytest.raises(InvalidRequest, match=message) as raised:
        parse_job_spec({**SPEC, "evaluation": {"oracle": oracle}})
    assert raised.value.param == "evaluation.oracle"


@pytest.fixture(scope="module")
def second_retrain(tiny_demo, tmp_path_factory):
    """A retrain of the tiny demo with another training seed: the oracle's data and
    recipe (``core.demo.build.training_files``), as ``bench/retrain_seeds.py`` trains them."""
    from core.demo.build import PRESETS, read_training_records, train_demo_model, training_files
    from core.models.loading import load_model

    _, tokenizer = load_model(str(tiny_demo.retrain))
    folder = tmp_path_factory.mktemp("retrain-seed1001")
    records = read_training_records(training_files(tiny_demo.data)["retrain"])
    train_demo_model(tokenizer, records, folder, PRESETS[TINY_PRESET], seed=1001)
    return folder


@pytest.mark.slow
def test_a_job_pools_an_oracle_model_and_a_stored_one(tiny_demo, second_retrain, tmp_path):
    from core.pipeline import OracleInput, run_job
    from core.pipeline_eval import ORACLE_STATS

    fields = {"hyperparameters": {"epochs": 2}, "evaluation": {"max_new_tokens": 8}}
    spec, inputs = demo_job(tiny_demo, oracle=True, **fields)
    inputs.oracles.append(
        OracleInput(str(second_retrain), "evaluation.oracle.1", model=str(second_retrain))
    )
    reporter = recording_reporter()
    outcome = run_job(spec, inputs, tmp_path / "models", reporter=reporter)
    report = outcome.report
    summary, evaluations = report["summary"], report["evaluations"]
    assert summary["forget_quality_oracles"] == 2
    assert evaluations["more_oracles"][0]["label"] == "oracle 2"
    assert [m for m, _ in reporter.of("phase") if "oracle" in m][:2] == [
        "evaluating the oracle model",
        "evaluating the oracle 2 model",
    ]
    # the stored statistics a later job reuses (job:<id>) are the first oracle's
    stored = json.loads((outcome.report_dir / ORACLE_STATS).read_text())
    assert stored["sets"]["forget"]["samples"] == evaluations["oracle"]["sets"]["forget"]["samples"]

    # the same job with the first oracle given as stored statistics measures the same
    spec, inputs = demo_job(tiny_demo, **fields)
    inputs.oracles = [
        OracleInput("job:job_earlier", result=stored),
        OracleInput(str(second_retrain), "evaluation.oracle.1", model=str(second_retrain)),
    ]
    again = run_job(spec, inputs, tmp_path / "again").report["summary"]
    assert again["forget_quality"] == pytest.approx(summary["forget_quality"])
    assert again["forget_quality_by_oracle"] == pytest.approx(summary["forget_quality_by_oracle"])
