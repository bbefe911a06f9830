"""bench/relearn_check.py: the verdict's relearning check on a preset's oracle and
target, printed as the script's two lines."""

from __future__ import annotations

import re

from tests.fixtures.bench import bench_module
from tests.fixtures.models import CACHE, TINY_PRESET


def test_it_reports_the_check_for_the_oracle_and_the_target(tiny_demo, capsys):
    with bench_module("relearn_check.py") as script:
        assert script.main(["--preset", TINY_PRESET, "--cache", str(CACHE)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = {}
    for line in lines:
        found = re.fullmatch(
            rf"{TINY_PRESET} (\w+): unseen forget half ([\d.e-]+), holdout ([\d.e-]+), "
            r"ratio ([\d.]+) \(limit 2.0\): (passes|fails)",
            line,
        )
        assert found, line
        name, unseen, held, ratio = found[1], *map(float, found.groups()[1:4])
        assert abs(ratio - unseen / held) < 0.01 + 0.01 * ratio
        assert (found[5] == "passes") == (ratio <= 2.0)
        figures[name] = ratio
    # the target memorized the forget answers: after the attack its unseen half is far
    # likelier than the holdout, more than in the model that never saw them
    assert set(figures) == {"retrain", "target"} and figures["target"] > figures["retrain"]
