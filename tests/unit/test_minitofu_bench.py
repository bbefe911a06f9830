"""bench/minitofu.py on the tiny demo: the JSON has the documented shape, and the
summary over seeds keeps a forget quality of 0.0 (it is a result, not a gap)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.fixtures.bench import bench_module


@pytest.fixture(scope="module")
def minitofu():
    with bench_module("minitofu.py") as module:
        yield module


def test_log10_forget_quality_counts_a_zero_p_value(minitofu):
    rows = [
        {"seed": s, "forget_quality": fq, "model_utility": 0.5, "hyperparameters": {}}
        for s, fq in ((0, 0.1), (1, 0.0))
    ]
    summary = minitofu.summarize(rows, original_mu=0.5)
    # mean(log10 0.1, log10 1e-300) = (-1 - 300) / 2
    assert summary["log10_forget_quality"] == pytest.approx(-150.5)
    assert summary["model_utility_ratio"] == pytest.approx(1.0)


@pytest.mark.slow
def test_tiny_run_writes_every_model_with_the_headline_metrics(minitofu, tiny_demo, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_demo.root, cache / "demo-tiny")  # reuse the session's build
    out = tmp_path / "results.json"
    argv = ["--preset", "tiny", "--seeds", "0", "--methods", "simnpo,ga"]
    assert minitofu.main([*argv, "--cache", str(cache), "--out", str(out)]) == 0
    methods = json.loads(out.read_text())["methods"]
    assert set(methods) == {"original", "retrain", "simnpo", "ga"}
    for row in methods.values():
        for key in ("forget_quality", "model_utility", "forget_probability", "privleak"):
            assert key in row
        assert math.isfinite(row["retain_probability"])
    assert methods["retrain"]["privleak"] == pytest.approx(0.0)
    assert methods["simnpo"]["forget_probability"] < methods["original"]["forget_probability"]
