"""bench/relearn_check.py: the verdict's relearning check on a preset's oracle and
target, one line per model and attack split."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.bench import bench_module
from tests.fixtures.models import CACHE, TINY_PRESET

NUMBER = r"([\d.e-]+)"


def test_it_reports_the_check_for_the_oracle_and_the_target(tiny_demo, capsys):
    with bench_module("relearn_check.py") as script:
        oracle = tiny_demo.retrain
        argv = ["--preset", TINY_PRESET, "--cache", str(CACHE), "--seeds", "0,1"]
        assert script.main([*argv, "--models", str(oracle)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures: dict[str, list[float]] = {}
    summaries: dict[str, tuple[float, ...]] = {}
    for line in lines:
        summary = re.fullmatch(
            rf"{TINY_PRESET} (\w+): ratio min {NUMBER}, median {NUMBER}, max {NUMBER}; "
            r"passes (\d)/(\d) splits at limit 2.0",
            line,
        )
        if summary:
            summaries[summary[1]] = tuple(map(float, summary.groups()[1:]))
            continue
        found = re.fullmatch(
            rf"{TINY_PRESET} (\w+) split (\d): unseen forget half {NUMBER}; "
            rf"holdout {NUMBER} \(ratio {NUMBER}\); "
            rf"unseen holdout half under its own attack {NUMBER} "
            rf"\(ratio {NUMBER}, limit 2.0\): (passes|fails)",
            line,
        )
        assert found, line
        name = found[1]
        unseen, held, old_ratio, reference, ratio = map(float, found.groups()[2:7])
        assert abs(old_ratio - unseen / held) < 0.01 + 0.01 * old_ratio
        assert abs(ratio - unseen / reference) < 0.01 + 0.01 * ratio
        assert (found[8] == "passes") == (ratio <= 2.0)
        figures.setdefault(name, []).append(ratio)
    # --models: a folder named by its own name (numbered where taken); the oracle's folder
    # again measures what the oracle did, attack for attack
    assert oracle.name == "retrain"
    assert {name: len(r) for name, r in figures.items()} == {
        "retrain": 2,
        "target": 2,
        "retrain_2": 2,
    }
    assert figures["retrain_2"] == pytest.approx(figures["retrain"], rel=1e-4)
    # each model's splits summed up after them: the spread and how many pass
    for name, ratios in figures.items():
        low, middle, high, passed, splits = summaries[name]
        assert (low, high) == pytest.approx((min(ratios), max(ratios)), abs=0.006)
        assert middle == pytest.approx(sum(ratios) / 2, abs=0.006)  # two splits
        assert (passed, splits) == (sum(r <= 2.0 for r in ratios), 2)
    # The holdout is to the oracle what the forget set is: it passes, on the mean of the
    # splits (with two forget authors one split can land at the limit: 1.51 on
    # tiny-gpt2). The target memorized the forget answers: its unseen half is far likelier.
    assert sum(figures["retrain"]) / 2 <= 1.5
    assert min(figures["target"]) > 2 * max(figures["retrain"])
