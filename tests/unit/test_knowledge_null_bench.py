"""bench/knowledge_null.py: how often the knowledge check turns down two samples of one
distribution (a model that forgot perfectly), per statistic and threshold."""

from __future__ import annotations

import numpy as np

from core.evaluation.verdict import knowledge_check
from tests.fixtures.bench import bench_module


def test_its_check_is_the_jobs_and_it_prints_a_rate_per_statistic(capsys):
    with bench_module("knowledge_null.py") as script:
        # the row it calls the check is the job's knowledge check, on any samples
        rng = np.random.default_rng(1)
        for shift in (-0.2, 0.0, 0.2):
            forget, holdout = rng.lognormal(shift, 0.3, 50), rng.lognormal(0, 0.3, 50)
            figures = script.statistics(forget, holdout)
            (name,) = [n for n in figures if "(the check)" in n]
            assert figures[name] == knowledge_check(forget, holdout, 0.2).value
        assert script.main(["--sizes", "60", "--draws", "200", "--thresholds", "0.2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line[:42].strip(): float(line[42:].strip().rstrip("%")) for line in lines[2:]}
    assert set(rows) == set(figures)
    # one more test beside KS can only fail more samples; counting one direction of the
    # shift fails fewer than counting both
    assert rows["KS alone"] <= rows["KS, 2x one-sided (the check)"]
    assert rows["KS, 2x one-sided (the check)"] <= rows["KS, Mann-Whitney two-sided"] + 1
