"""What a report suggests when the target was not met (``summary.next_steps``): one
suggestion per reason the verdict gave, each with the spec fields it means; nothing for
a met target or a job without one. Verdicts are built with the verdict's own checks."""

from __future__ import annotations

import numpy as np

from core.evaluation.next_steps import SIMNPO_RECIPE, next_steps
from core.evaluation.report_html import render_report
from core.evaluation.verdict import (
    confirmation_check,
    decide,
    forgetting_checks,
    knowledge_check,
    membership_check,
    relearning_check,
    utility_check,
)
from tests.unit.test_report_verdict import report as base_report

SIMNPO_DEFAULTS = {
    "learning_rate": 3e-4,
    "forget_coeff": 0.125,
    "retain_coeff": 1.0,
    "retain_loss": "nll",
    "gamma": 0.0,
    "sam_rho": 0.0,
}
ALIKE = np.linspace(0.1, 0.9, 50)


def job_report(checks, *, hyperparameters=None, target=True, retain=True):
    verdict = decide(checks).to_dict()
    verdict["target_met"] = target and verdict["status"] == "forgotten"
    out = base_report()
    out["job"].update(
        hyperparameters={**SIMNPO_DEFAULTS, **(hyperparameters or {})},
        target={"utility_floor": 0.95, "max_epochs": 20} if target else None,
    )
    if retain:
        out["job"]["data"]["retain"] = {"file": "retain.jsonl", "records": 360}
    out["summary"].update(verdict=verdict, target_met=verdict["target_met"])
    return out


def remembered():
    # forget answers all likelier than the holdout's: AUC 1.0
    return membership_check(-np.full(20, 0.1), -np.full(20, 3.0), two_sided=True)


def over_forgotten():
    return membership_check(-np.full(20, 9.0), -np.full(20, 3.0), two_sided=True)


def calibrated():
    return membership_check(-np.arange(20.0), -np.arange(20.0), two_sided=True)


def test_a_met_target_or_a_job_without_one_gets_none():
    passing = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(1.0, 0.95)]
    assert next_steps(job_report(passing)) == []
    failing = [knowledge_check(ALIKE, ALIKE + 5, 0.2), remembered()]
    assert next_steps(job_report(failing, target=False)) == []


def test_each_failed_check_gets_its_change():
    checks = [
        knowledge_check(ALIKE, ALIKE + 5, 0.2),
        remembered(),
        utility_check(0.9, 0.95),
        relearning_check(0.5, 0.1),
    ]
    steps = next_steps(job_report(checks))
    assert [s["reason"] for s in steps] == ["membership", "utility", "relearning"]
    longer, utility, relearning = (s["spec"] for s in steps)
    # still remembered: a new job with twice the budget (20 -> 40 epochs)
    assert longer == {"target": {"max_epochs": 40}}
    # SimNPO's defaults lost utility: its sharpness-aware recipe kept more
    assert utility == {"hyperparameters": SIMNPO_RECIPE, "target": {"max_epochs": 40}}
    assert relearning == {"hyperparameters": {"sam_rho": 0.3}, "target": {"max_epochs": 40}}


def test_over_forgetting_halves_the_learning_rate():
    steps = next_steps(job_report([knowledge_check(ALIKE, ALIKE, 0.2), over_forgotten()]))
    assert [(s["reason"], s["spec"]) for s in steps] == [
        ("membership", {"hyperparameters": {"learning_rate": 1.5e-4}})
    ]


def test_still_knowing_at_the_unseen_level_suggests_the_recipe_once():
    checks = [knowledge_check(ALIKE, ALIKE + 5, 0.2), calibrated(), utility_check(1.0, 0.95)]
    (step,) = next_steps(job_report(checks))
    assert step["reason"] == "knowledge"
    assert step["spec"] == {"hyperparameters": SIMNPO_RECIPE, "target": {"max_epochs": 40}}
    # the recipe already ran: nothing measured did better, so nothing to set
    (again,) = next_steps(job_report(checks, hyperparameters=SIMNPO_RECIPE))
    assert again["spec"] == {} and "this recipe included" in again["text"]


def test_a_relearning_failure_the_oracle_shares_asks_for_a_larger_holdout():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), relearning_check(0.5, 0.05)]
    out = job_report(checks)
    out["relearn"] = {"unseen_probability_vs_oracle": 1.2}  # within the goal's 1.5x
    (step,) = next_steps(out)
    assert step["spec"] == {} and "1.2x" in step["text"] and "larger holdout" in step["text"]
    out["relearn"] = {"unseen_probability_vs_oracle": 1.9}  # beyond it: forget harder
    assert next_steps(out)[0]["spec"]["hyperparameters"] == {"sam_rho": 0.3, "sam_steer": True}


def test_a_service_job_that_only_relearns_is_continued_with_sharpness_aware_epochs():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), relearning_check(0.5, 0.05)]
    out = job_report(checks)
    out["relearn"] = {"unseen_probability_vs_oracle": 1.6}
    out["job"]["id"] = "job-1"
    (step,) = next_steps(out)
    assert step["reason"] == "relearning" and "continue this job" in step["text"]
    assert step["spec"] == {
        "continue_from": "job-1",
        "hyperparameters": {"sam_rho": 0.3, "sam_steer": True},
        "target": {"max_epochs": 30},
    }
    # a job that had a fixed radius is continued with it steered
    out["job"]["hyperparameters"]["sam_rho"] = 0.5
    (step,) = next_steps(out)
    assert step["spec"]["hyperparameters"] == {"sam_rho": 0.5, "sam_steer": True}
    out["job"]["hyperparameters"]["sam_steer"] = True  # steered already: not again
    assert next_steps(out)[0]["spec"].get("continue_from") is None


def test_sharpness_already_on_is_steered_then_given_its_budget_then_nothing():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), relearning_check(0.5, 0.1)]
    (step,) = next_steps(job_report(checks, hyperparameters={"sam_rho": 0.3}))
    assert step["spec"]["hyperparameters"] == {"sam_rho": 0.3, "sam_steer": True}
    steered = {"sam_rho": 0.3, "sam_steer": True}
    (step,) = next_steps(job_report(checks, hyperparameters=steered))
    assert step["spec"] == {"target": {"max_epochs": 40}}
    at_budget = job_report(checks, hyperparameters=steered)
    at_budget["job"]["target"]["max_epochs"] = 40
    assert next_steps(at_budget)[0]["spec"] == {}


def test_one_change_for_two_reasons_is_said_once():
    checks = [knowledge_check(ALIKE, ALIKE + 5, 0.2), calibrated(), utility_check(0.6, 0.95)]
    (step,) = next_steps(job_report(checks))
    assert step["reason"] == "utility" and step["spec"]["hyperparameters"] == SIMNPO_RECIPE


def test_utility_lost_by_another_method_halves_its_learning_rate():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(0.6, 0.95)]
    graddiff = job_report(checks)
    graddiff["job"]["method"] = "graddiff"
    (step,) = next_steps(graddiff)
    assert step["spec"] == {"hyperparameters": {"learning_rate": 1.5e-4}}


def test_a_floor_above_the_oracles_utility_is_named_first():
    # the README demo's oracle keeps 0.905x of the original's utility
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(0.92, 0.95)]
    out = job_report(checks)
    out["summary"]["oracle_checks"] = {
        "passes": True,
        "checks": [],
        "utility_ratio": 0.905,
        "utility_floor": 0.95,
    }
    first, second = next_steps(out)
    assert first["reason"] == "utility" and "keeps only 0.905x" in first["text"]
    assert first["spec"] == {"target": {"utility_floor": 0.9}}
    assert second["spec"]["hyperparameters"] == SIMNPO_RECIPE
    html = render_report(out, {})
    assert "a model retrained without the forget set keeps 90%" in html
    # an oracle above the floor: the usual suggestion alone
    out["summary"]["oracle_checks"]["utility_ratio"] = 0.97
    (step,) = next_steps(out)
    assert step["spec"]["hyperparameters"] == SIMNPO_RECIPE


def test_the_utility_line_is_judged_by_the_jobs_floor():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(0.92, 0.95)]
    out = job_report(checks)
    out["summary"]["model_utility_ratio"] = 0.92
    assert '<span class="fail">Model utility' in render_report(out, {})
    # without a target, the generic 0.9
    out["job"]["target"] = None
    assert '<span class="pass">Model utility' in render_report(out, {})


def test_no_retain_set_or_only_confirmation_missing():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(0.5, 0.95)]
    (step,) = next_steps(job_report(checks, retain=False))
    assert step["spec"] == {"retain": "<dataset to keep>"}
    confirm = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), confirmation_check(1, 2)]
    (step,) = next_steps(job_report(confirm))
    assert step["reason"] == "confirmation"
    assert step["spec"] == {"target": {"max_epochs": 40}}


def test_no_holdout_asks_for_one():
    out = job_report([utility_check(1.0, 0.95)])
    checks, missing = forgetting_checks({"truth_ratio": list(ALIKE)}, None, threshold=0.2)
    out["summary"]["verdict"] = decide(checks, missing=missing).to_dict()
    out["summary"]["target_met"] = False
    (step,) = next_steps(out)
    assert step["reason"] == "holdout" and "give evaluation.holdout" in step["text"]
    assert step["spec"] == {"evaluation": {"holdout": "<dataset of unseen records>"}}


def test_the_page_lists_them_under_in_short():
    out = job_report([knowledge_check(ALIKE, ALIKE + 5, 0.2), remembered()])
    out["summary"]["next_steps"] = next_steps(out)
    html = render_report(out, {})
    start = html.index('id="next-steps"')
    section = html[start : html.index("</section>", start)]
    assert "twice the budget" in section
    assert '<code>{"target": {"max_epochs": 40}}</code>' in section


def lost_on_world_facts(report):
    """The original's utility values: retain probability 0.9 and the world facts'
    truth-ratio score 0.1 (weights 1/0.9 and 1/0.1 over their sum: 0.1 and 0.9); the
    unlearned model kept retain (0.99x) and lost 20% of the world facts' score."""
    components = {"retain": {"probability": 0.9}, "utility/world_facts": {"truth_ratio": 0.1}}
    after = {"retain": {"probability": 0.891}, "utility/world_facts": {"truth_ratio": 0.08}}
    sets = {"forget": {"samples": {"index": list(range(40))}}}
    report["evaluations"] = {
        "before": {"sets": sets, "metrics": {"model_utility_components": components}},
        "after": {"sets": sets, "metrics": {"model_utility_components": after}},
    }
    report["summary"]["utility_parts"] = {
        "retain/probability": 0.99,
        "utility/world_facts/truth_ratio": 0.8,
    }
    return report


def test_utility_lost_outside_the_retain_set_names_it_and_asks_for_records_like_it():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(0.82, 0.95)]
    report = lost_on_world_facts(job_report(checks))
    recipe, cover = next_steps(report)
    # costs: 0.9 x (1 - 0.8) = 0.18 on world facts against 0.1 x (1 - 0.99) = 0.001
    assert (
        "most in the truth-ratio score of world_facts (0.80x the original's; 90% of"
        in (recipe["text"])
    )
    assert recipe["spec"]["hyperparameters"] == SIMNPO_RECIPE
    assert cover["spec"] == {"retain": "<retain set with records like world_facts>"}
    # the report's table: the largest loss first, with its weight
    page = render_report(report, {})
    assert "Where utility went" in page
    assert page.index("truth-ratio score") < page.index("answer probability")
    assert "0.800x" in page and "0.90</td>" in page


def test_utility_lost_on_the_retain_set_asks_for_no_records():
    checks = [knowledge_check(ALIKE, ALIKE, 0.2), calibrated(), utility_check(0.82, 0.95)]
    report = lost_on_world_facts(job_report(checks))
    report["summary"]["utility_parts"] = {
        "retain/probability": 0.5,
        "utility/world_facts/truth_ratio": 1.0,
    }
    (step,) = next_steps(report)
    assert "most in the answer probability of retain (0.50x" in step["text"]


def test_a_knowledge_failure_the_oracle_shares_asks_for_a_larger_holdout():
    # The oracle's truth ratios against this holdout set fail the same test (the forget
    # records differ from the holdout ones by themselves): training longer or harder
    # cannot fix what a model that never saw the forget set fails too.
    checks = [knowledge_check(ALIKE, ALIKE + 5, 0.2), calibrated(), utility_check(1.0, 0.95)]
    out = job_report(checks)
    oracle = [knowledge_check(ALIKE, ALIKE + 5, 0.2), calibrated()]
    out["summary"]["oracle_checks"] = decide(oracle).to_dict() | {"passes": False}
    (step,) = next_steps(out)
    assert step["reason"] == "knowledge" and "oracle" in step["text"]
    assert step["spec"] == {"evaluation": {"holdout": "<a larger dataset of unseen records>"}}
    # the verdict box says so in words, with the oracle's figures
    html = render_report(out, {})
    box = html[
        html.index('id="verdict-title"') : html.index(
            "</section>", html.index('id="verdict-title"')
        )
    ]
    assert "The retrain oracle, which never saw the forget set, fails" in box
    assert "differ by themselves" in box
    # an oracle that passes changes nothing: the recipe, as without one
    out["summary"]["oracle_checks"] = {"passes": True, "checks": [calibrated().to_dict()]}
    (step,) = next_steps(out)
    assert step["spec"] == {"hyperparameters": SIMNPO_RECIPE, "target": {"max_epochs": 40}}
