"""Per-request evidence of a batch job and the cost estimate (``core.batch_evidence``),
on hand-made per-sample scores."""

from __future__ import annotations

import numpy as np
import pytest

from core.batch_evidence import MIN_RECORDS_FOR_OWN_TEST, batch_cost, request_outcome

RNG = np.random.default_rng(0)
HOLDOUT = {"truth_ratio": list(RNG.uniform(0.4, 0.9, 60)), "mia_loss": list(RNG.normal(3, 0.3, 60))}


def records(count: int) -> dict:
    return {"dataset_id": "ds_1", "sha256": "a" * 64, "count": count, "offset": 0}


def test_remembered_records_are_not_forgotten_and_forgotten_ones_are():
    remembered = {"truth_ratio": [0.05] * 30, "mia_loss": [0.2] * 30}
    outcome = request_outcome(
        "dr_1", records(30), remembered, HOLDOUT, threshold=0.2, two_sided=False
    )
    assert outcome["status"] == "not_forgotten" and outcome["small_sample"] is False
    like_holdout = {key: values[:30] for key, values in HOLDOUT.items()}
    outcome = request_outcome(
        "dr_1", records(30), like_holdout, HOLDOUT, threshold=0.2, two_sided=False
    )
    assert outcome["status"] == "forgotten"
    assert outcome["records"]["sha256"] == "a" * 64
    assert outcome["figures"]["records_evaluated"] == 30


def test_a_handful_of_records_is_flagged_a_small_sample():
    """Two remembered records: the KS test has too little power to tell them from the
    holdout, so the own check alone would say forgotten. It is flagged, and fulfilment
    also needs the union's verdict (tests/integration/test_deletion_batches.py)."""
    few = {"truth_ratio": [0.3, 0.35], "mia_loss": [2.9, 3.0]}
    outcome = request_outcome("dr_1", records(2), few, HOLDOUT, threshold=0.2, two_sided=False)
    assert outcome["small_sample"] is True
    assert MIN_RECORDS_FOR_OWN_TEST > 2


def test_unreadable_records_or_no_holdout_are_not_verifiable():
    outcome = request_outcome("dr_1", records(5), None, HOLDOUT, threshold=0.2, two_sided=False)
    assert outcome["status"] == "not_verifiable"
    outcome = request_outcome(
        "dr_1", records(5), {"truth_ratio": [0.5]}, None, threshold=0.2, two_sided=False
    )
    assert outcome["status"] == "not_verifiable"


def test_the_cost_estimate_repeats_the_evaluation_per_request():
    cost = batch_cost(3, training_s=10.0, evaluation_s=4.0, request_checks_s=0.5)
    assert cost["requests_served"] == 3 and cost["jobs_saved"] == 2
    assert cost["measured_seconds"] == pytest.approx(14.5)
    assert cost["estimated_separate_seconds"] == pytest.approx(10.0 + 3 * 4.0)
    assert cost["saved_seconds"] == pytest.approx(22.0 - 14.5)
    assert batch_cost(1, training_s=1, evaluation_s=1, request_checks_s=0)["jobs_saved"] == 0
