"""Per-request evidence of a batch job, and what batching saved. No torch here: the
worker feeds it per-sample scores, the API reads what it wrote.

The fulfilment rule of a batched request (docs/deletion-requests.md): the batch job's
own verdict (on the union of the records, with utility and, when asked, relearning) is
``forgotten`` **and** the request's own records pass the verdict's forgetting checks
(``core.evaluation.verdict.forgetting_checks``: truth-ratio KS test and membership AUC,
the request's records vs the job's holdout records, the job's threshold) on the
published model.

Why both: the union's verdict is the stronger test (many records), but one subject's
records could still be remembered inside a union that, on average, looks forgotten;
the request's own check catches that. Why the own check alone is not enough: with a
handful of records the KS test has little power, so its p-value is high even when the
model remembers; a weak test passes too easily. Requiring the union's verdict as well
means a small sample can only take fulfilment away, never grant it. A request with
fewer than :data:`MIN_RECORDS_FOR_OWN_TEST` records is flagged ``small_sample`` in its
evidence so a reader knows how little its own check says by itself.
"""

from __future__ import annotations

from typing import Any

#: below this many records a request's own check is flagged as a weak test
MIN_RECORDS_FOR_OWN_TEST = 20
FORGOTTEN = "forgotten"


def request_outcome(
    request_id: str,
    records: dict[str, Any],
    forget: dict[str, Any] | None,
    holdout: dict[str, Any] | None,
    *,
    threshold: float,
    two_sided: bool,
) -> dict[str, Any]:
    """The check of one request's records from the published model's per-sample scores
    (columns ``truth_ratio``, ``mia_loss``) of its records and of the holdout set.
    ``records`` says which records (dataset id, sha256, count, place in the union)."""
    from core.evaluation.verdict import decide, forgetting_checks

    count = int(records.get("count") or 0)
    outcome: dict[str, Any] = {
        "request_id": request_id,
        "records": dict(records),
        "small_sample": count < MIN_RECORDS_FOR_OWN_TEST,
    }
    if forget is None:
        return {
            **outcome,
            "status": "not_verifiable",
            "reason": "the request's records could not be evaluated",
            "checks": [],
        }
    checks, missing = forgetting_checks(forget, holdout, threshold=threshold, two_sided=two_sided)
    verdict = decide(checks, missing=missing).to_dict()
    return {
        **outcome,
        "status": verdict["status"],
        "reason": verdict["reason"],
        "checks": verdict["checks"],
        "figures": _figures(forget, holdout),
    }


def _figures(forget: dict[str, Any], holdout: dict[str, Any] | None) -> dict[str, Any]:
    """Means of the request's records' scores beside the holdout's, for a reader."""

    def mean(column: dict[str, Any] | None, name: str) -> float | None:
        values = [v for v in (column or {}).get(name) or [] if v is not None and v == v]
        return sum(values) / len(values) if values else None

    return {
        "records_evaluated": len(forget.get("mia_loss") or forget.get("truth_ratio") or []),
        "truth_ratio": mean(forget, "truth_ratio"),
        "holdout_truth_ratio": mean(holdout, "truth_ratio"),
        "loss": mean(forget, "mia_loss"),
        "holdout_loss": mean(holdout, "mia_loss"),
    }


def batch_cost(
    requests: int,
    *,
    training_s: float,
    evaluation_s: float,
    request_checks_s: float,
) -> dict[str, Any]:
    """What serving ``requests`` requests with one job cost, against an estimate of one
    job each.

    Measured: the batch job's training seconds, its evaluation seconds (before and
    after, and at every evaluation point) and the per-request checks batching adds.
    Estimate of separate jobs: ``training_s + requests * evaluation_s``. Training time
    grows with the records trained on, and separate jobs train on the same records in
    total, so their training adds up to about the batch's; the evaluation (the original
    and unlearned model on the holdout, retain and utility sets, and the verdict's
    points) does not shrink with fewer forget records, so each separate job pays it
    again. It leaves out what each separate job would also repeat (loading the model,
    queueing) and assumes each would need as many epochs: it understates the saving.
    """
    measured = training_s + evaluation_s + request_checks_s
    separate = training_s + requests * evaluation_s
    return {
        "requests_served": requests,
        "jobs_saved": max(requests - 1, 0),
        "training_seconds": round(training_s, 2),
        "evaluation_seconds": round(evaluation_s, 2),
        "request_checks_seconds": round(request_checks_s, 2),
        "measured_seconds": round(measured, 2),
        "estimated_separate_seconds": round(separate, 2),
        "saved_seconds": round(separate - measured, 2),
        "estimate": "training_seconds + requests_served x evaluation_seconds: separate "
        "jobs train on the same records in total but each repeats the evaluation",
    }
