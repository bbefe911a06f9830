"""Regression re-checks, by hand: the walk from a base model back to certified jobs, and
the decision on the re-checked scores (core.regressions)."""

from __future__ import annotations

import numpy as np

from core.regressions import MAX_HOPS, RegressionTarget, ancestor_jobs, regression_outcome


def producer_of(chain: dict[str, tuple[str, str]]):
    return chain.get


def test_the_walk_follows_job_outputs_back_to_a_non_job_model():
    chain = {
        "job_c": ("job_c", "job_b"),  # job_c's output is named job_c; its base was job_b
        "job_b": ("job_b", "job_a"),
        "job_a": ("job_a", "org/base-model"),
    }
    assert ancestor_jobs("job_c", producer_of(chain)) == ["job_c", "job_b", "job_a"]
    assert ancestor_jobs("org/base-model", producer_of(chain)) == []


def test_the_walk_stops_at_a_loop_and_after_a_few_hops():
    looped = {"a": ("job_a", "b"), "b": ("job_b", "a")}
    assert ancestor_jobs("a", producer_of(looped)) == ["job_a", "job_b"]
    long = {f"m{i}": (f"job_{i}", f"m{i + 1}") for i in range(20)}
    assert len(ancestor_jobs("m0", producer_of(long))) == MAX_HOPS


def target(**overrides) -> RegressionTarget:
    fields = {
        "request_id": "dr_1",
        "certified_job_id": "job_1",
        "forget_dataset_id": "ds_f",
        "holdout_dataset_id": "ds_h",
        **overrides,
    }
    return RegressionTarget(**fields)


def scores(rng, truth_ratio_mean: float, loss_mean: float, n: int = 40) -> dict:
    return {
        "truth_ratio": list(rng.normal(truth_ratio_mean, 0.05, n)),
        "mia_loss": list(rng.normal(loss_mean, 0.1, n)),
    }


def test_records_that_came_back_are_flagged_and_forgotten_ones_are_not():
    rng = np.random.default_rng(0)
    holdout = scores(rng, 0.6, 2.0)
    still_gone = regression_outcome(
        target(), scores(rng, 0.6, 2.0), holdout, default_threshold=0.05
    )
    assert (still_gone["status"], still_gone["regressed"]) == ("forgotten", False)
    # relearned: the model prefers the right answers and finds them likely again
    back = regression_outcome(target(), scores(rng, 0.2, 0.5), holdout, default_threshold=0.05)
    assert (back["status"], back["regressed"]) == ("not_forgotten", True)
    assert {c["name"] for c in back["checks"]} == {"knowledge", "membership"}
    assert back["request_id"] == "dr_1" and back["certified_job_id"] == "job_1"


def test_a_shredded_forget_set_is_reported_not_checked_not_failed():
    outcome = regression_outcome(
        target(not_checked="the forget set ds_f was shredded"), None, None, default_threshold=0.05
    )
    assert outcome["status"] == "not_checked" and outcome["regressed"] is False
    assert "shredded" in outcome["reason"]
