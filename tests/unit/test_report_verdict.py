"""The report's verdict and its page: the plain answer from the evidence (thresholds
crossed either way, relearning, no oracle), and the HTML that opens with it."""

from __future__ import annotations

import re

from core.evaluation.evidence import interim_verdict, relearn_recovery
from core.evaluation.report_html import render_report


def report(**summary) -> dict:
    base = {
        "forget_quality": 0.4,
        "forget_quality_reason": None,
        "forget_probability": 0.05,
        "forget_probability_before": 0.85,
        "model_utility": 0.5,
        "model_utility_ratio": 0.95,
        "privleak": 3.0,
        "privleak_reason": None,
    }
    base.update(summary)
    relearn = summary.pop("relearn", None)
    base.pop("relearn", None)
    return {
        "schema_version": "1.2",
        "generated_at": "2026-12-03T00:00:00+00:00",
        "job": {
            "id": "job_1",
            "method": "simnpo",
            "hyperparameters": {"learning_rate": 0.001, "beta": 2.5},
            "data": {"forget": {"file": "forget.jsonl", "records": 40}},
            "deletion_request": "dr_01abc",
            "deletion_request_ref": "DSR-1234",
            "submitted_by": "key:0123456789abcdef",
        },
        "summary": base,
        "comparison": {
            "models": {
                "before": {"forget_probability": 0.85, "mia_auc": {"min_k": 0.9}},
                "after": {"forget_probability": 0.05, "mia_auc": {"min_k": 0.62}},
                "oracle": {"forget_probability": 0.04, "mia_auc": {"min_k": 0.5}},
            },
            "privleak_by_attack": {"min_k": base["privleak"]},
            "strata": {},
            "notes": [],
        },
        "evaluations": {},
        "relearn": relearn,
        "files": {"plots": {}},
    }


def unseen_relearn(after: float) -> dict:
    return {
        "steps": 5,
        "before_attack_unseen": {"forget_probability": 0.05},
        "after_attack_unseen": {"forget_probability": after},
    }


def test_passing_evidence_is_forgotten_and_says_what_was_not_checked():
    verdict = interim_verdict(report())
    assert verdict["status"] == "forgotten" and verdict["forgotten"]
    assert "0.4" in verdict["reason"] and "Not checked: a relearning attack" in verdict["reason"]
    assert {c["name"]: c["passed"] for c in verdict["checks"]} == {
        "forget_quality": True,
        "privleak": True,
        "model_utility_ratio": True,
    }


def test_weak_forget_quality_is_not_forgotten():
    # The case: p = 0.057 is above 0.05 and was shown green.
    verdict = interim_verdict(report(forget_quality=0.057))
    assert verdict["status"] == "not_forgotten"
    assert "differs measurably" in verdict["reason"]


def test_privleak_far_from_zero_fails_in_both_directions():
    under = interim_verdict(report(privleak=28.0))
    over = interim_verdict(report(privleak=-28.0))
    assert under["status"] == over["status"] == "not_forgotten"
    assert "trained-on (under-unlearned)" in under["reason"]
    assert "over-unlearned" in over["reason"]


def test_a_relearning_attack_that_brings_it_back_fails():
    # Removed 0.80 of probability; the attack brings 0.60 of it back on unseen samples.
    evidence = report(relearn=unseen_relearn(after=0.53))
    assert abs(relearn_recovery(evidence) - 0.6) < 1e-9
    verdict = interim_verdict(evidence)
    assert verdict["status"] == "not_forgotten" and "it was hidden" in verdict["reason"]
    kept = interim_verdict(report(relearn=unseen_relearn(after=0.10)))
    assert kept["status"] == "forgotten" and "relearning found nothing" in kept["reason"]


def test_without_an_oracle_it_is_not_verifiable_unless_something_fails():
    no_oracle = report(forget_quality=None, forget_quality_reason="no oracle", privleak=None)
    verdict = interim_verdict(no_oracle)
    assert verdict["status"] == "not_verifiable" and "no oracle" in verdict["reason"]
    failing = report(forget_quality=None, privleak=None, relearn=unseen_relearn(after=0.7))
    assert interim_verdict(failing)["status"] == "not_forgotten"
    # Utility alone never decides forgetting.
    assert interim_verdict(report(model_utility_ratio=0.5))["status"] == "forgotten"


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_opens_with_the_verdict_and_flags_each_figure():
    evidence = report(privleak=-28.0, relearn=unseen_relearn(after=0.53))
    evidence["summary"]["verdict"] = interim_verdict(evidence)
    html = render_report(evidence, {})
    text = _text(html)
    assert text.index("Verdict: Not forgotten") < text.index("In short") < text.index("Job")
    # PrivLeak is red although it is negative, in the checks and in the attack table.
    assert re.search(r'class="num fail">-28\.0<', html)
    assert re.search(r'<td class="num fail">\s*-28\.0\s*</td>', html)
    # Forget quality passes: green.
    assert re.search(r'class="num pass">0\.4<', html)
    # The relearning result is in "In short".
    short = text[text.index("In short") : text.index("Metrics before and after")]
    assert "relearning attack brought back 60%" in short
    assert "dr_01abc" in text and "DSR-1234" in text and "key:0123456789abcdef" in text
    assert "Glossary" in text and "Relearning recovery" in text and "oracle" in text
    # No raw JSON in the job table: nested values are tables.
    job = html[html.index("<h2>Job</h2>") : html.index("<h2>Glossary</h2>")]
    assert "{" not in job and "learning_rate" in job and "forget.jsonl" in job


def test_a_report_written_before_verdicts_still_renders_one():
    old = report(forget_quality=0.02)
    old["schema_version"] = "1.1"
    html = render_report(old, {})
    assert "Verdict: Not forgotten" in _text(html)
