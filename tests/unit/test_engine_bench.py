"""bench/engine_throughput.py: the smoke run measures every method with both loops, and
the two loops train identically (same tokens, same loss trace)."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.bench import bench_module


@pytest.fixture(scope="module")
def bench():
    with bench_module("engine_throughput.py") as module:
        yield module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    """One ``--quick`` run (tiny random Llama, every configuration, both loops)."""
    out = tmp_path_factory.mktemp("engine_bench") / "results.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_run_reports_every_method_with_positive_numbers(bench, quick):
    rows = quick["rows"]
    assert {row["method"] for row in rows} == {"ga", "graddiff", "npo", "simnpo", "loku"}
    assert {row["label"] for row in rows} == {config.label for config in bench.CONFIGS}
    for row in rows:
        for loop in ("obliviate", "baseline"):
            stats = row[loop]
            assert stats["tokens_per_s"] > 0, (row["label"], loop)
            assert stats["steady_tokens_per_s"] > 0, (row["label"], loop)
            assert stats["peak_memory"] > 0, (row["label"], loop)
            assert stats["live_tensor_peak"] > 0, (row["label"], loop)
        assert row["ratios"]["tokens_per_s"] > 0
        assert row["ratios"]["live_tensor_peak"] > 0


def test_both_loops_do_the_same_training(quick):
    for row in quick["rows"]:
        # Same batches and the same losses: only the reference handling differs.
        assert row["same_tokens"], row["label"]
        assert row["loss_trace_max_abs_diff"] < 1e-4, row["label"]


def test_baseline_keeps_a_reference_copy_where_the_framework_does(quick):
    rows = {row["label"]: row for row in quick["rows"]}
    weights = rows["npo"]["baseline"]["state_bytes"]["weights"]
    # NPO: the baseline holds a full copy, Obliviate none (its reference NLLs are cached).
    assert rows["npo"]["baseline"]["state_bytes"]["reference_copy"] == weights
    assert rows["npo"]["obliviate"]["state_bytes"]["reference_copy"] == 0
    assert rows["npo+lora"]["baseline"]["state_bytes"]["reference_copy"] == weights
    assert rows["npo[kl]+lora"]["obliviate"]["state_bytes"]["reference_copy"] == 0
    # A KL retain term under full fine-tuning needs the frozen copy in both loops.
    assert rows["npo[kl]"]["obliviate"]["state_bytes"]["reference_copy"] == weights
    # SimNPO with an NLL retain term needs no reference anywhere.
    assert rows["simnpo"]["baseline"]["state_bytes"]["reference_copy"] == 0
    # The census sees the copy (and the reference logits): the baseline's live peak exceeds
    # Obliviate's by at least the weights.
    extra = (
        rows["npo"]["baseline"]["live_tensor_peak"] - rows["npo"]["obliviate"]["live_tensor_peak"]
    )
    assert weights <= extra < 2 * weights


def test_live_tensor_census_counts_allocations_and_releases(bench):
    import torch

    with bench.LiveTensorBytes() as census:
        kept = torch.zeros(1000)  # 4,000 bytes
        view = kept.view(10, 100)  # same storage: not counted again
        temporary = torch.ones(2000)  # 8,000 bytes
        del temporary
        assert census.live == 4000
        assert census.peak == 12000
        del kept, view
        assert census.live == 0
