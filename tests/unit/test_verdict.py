"""The forgetting verdict: its checks on hand-made samples, and the statistic on the
demo's target (never unlearned: not forgotten) and retrain (never trained on the
forget set: forgotten)."""

from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.verdict import (
    HOLDOUT_HELP,
    decide,
    forgetting_checks,
    knowledge_check,
    membership_check,
    oracle_checks,
    relearning_check,
    utility_check,
)


def test_knowledge_sees_a_shift_that_ks_misses():
    # Holdout ratios 1..120, forget ones 10 lower: KS's D = 10/120, lambda = D * sqrt(60)
    # = 0.645, p = 2 * (e^-0.832 - e^-3.33 + ...) = 0.80; Mann-Whitney's U counts forget >
    # holdout pairs: 1 + ... + 109 = 5995 plus half of the 110 ties = 6050 against a mean
    # of 7200 and a standard deviation of sqrt(120^2 * 241 / 12) = 537.8: z = -2.14,
    # p = 0.032 (two-sided; the shift is toward the right answers, the direction that
    # counts). The model still prefers the right answers a little more on the forget
    # questions: the check takes the smaller p-value and fails.
    holdout = np.arange(1.0, 121.0)
    check = knowledge_check(holdout - 10, holdout, threshold=0.2)
    assert check.value == pytest.approx(0.032, abs=0.002) and check.passed is False


def test_knowledge_lets_the_wrong_answers_be_likelier_than_on_unseen_questions():
    # The same shift the other way (forget ratios 10 higher: wrong answers a little
    # likelier than on unseen questions, as the retrain oracles of two Llama benchmark
    # builds show): Mann-Whitney's lower tail is 1 - 0.016 = 0.984 (twice that: 1), KS is
    # 0.80 as above; the check's p is KS's and it passes. Far higher still fails, by KS.
    holdout = np.arange(1.0, 121.0)
    check = knowledge_check(holdout + 10, holdout, threshold=0.2)
    assert check.value == pytest.approx(0.80, abs=0.01) and check.passed
    assert knowledge_check(holdout + 60, holdout, threshold=0.2).passed is False


def _oracle(forget: dict, holdout: dict | None):
    """An evaluation result's shape: ``sets[name].samples`` columns."""
    from types import SimpleNamespace

    sets = {"forget": SimpleNamespace(samples=forget)}
    if holdout is not None:
        sets["holdout"] = SimpleNamespace(samples=holdout)
    return SimpleNamespace(sets=sets)


def test_the_oracle_under_the_same_checks():
    # The oracle's own truth ratios, forget 10 below holdout (the shift above: p 0.032),
    # and its losses alike (AUC 0.5): a model that never saw the forget set fails the
    # knowledge check against this holdout set, so the report says the sets differ.
    holdout = np.arange(1.0, 121.0)
    losses = np.arange(120.0)
    shifted = oracle_checks(
        _oracle(
            {"truth_ratio": holdout - 10, "mia_loss": losses},
            {"truth_ratio": holdout, "mia_loss": losses.copy()},
        )
    )
    assert shifted["passes"] is False
    checks = {c["name"]: c for c in shifted["checks"]}
    assert checks["knowledge"]["value"] == pytest.approx(0.032, abs=0.002)
    assert checks["membership"]["value"] == 0.5 and checks["membership"]["passed"]
    assert "still knows" in shifted["reason"]
    alike = oracle_checks(
        _oracle(
            {"truth_ratio": holdout, "mia_loss": losses},
            {"truth_ratio": holdout.copy(), "mia_loss": losses.copy()},
        )
    )
    assert alike["passes"] is True
    # Without a holdout set (or an oracle) there is nothing to say.
    assert oracle_checks(_oracle({"truth_ratio": holdout}, None)) is None
    assert oracle_checks(None) is None


def test_the_oracles_utility_beside_the_floor():
    # Harmonic means by hand: the original's retain set 0.8 and 1.0 -> 2 / (1.25 + 1) =
    # 0.8889; the oracle's 0.5 and 1.0 -> 2 / (2 + 1) = 0.6667; the oracle keeps 0.75x.
    from types import SimpleNamespace

    def retain(probability):
        aggregates = {"probability": probability, "rouge_recall": 1.0}
        return SimpleNamespace(aggregates=aggregates, column=lambda name: None)

    holdout = np.arange(1.0, 121.0)
    oracle = _oracle({"truth_ratio": holdout}, {"truth_ratio": holdout.copy()})
    oracle.sets["retain"] = retain(0.5)
    before = SimpleNamespace(sets={"retain": retain(0.8)})
    checks = oracle_checks(oracle, before=before)
    assert checks["utility_ratio"] == pytest.approx(0.75)
    assert checks["utility_floor"] == 0.95  # the default target's
    assert oracle_checks(oracle)["utility_ratio"] is None  # no original to compare with


def test_knowledge_passes_alike_ratios_and_fails_separated_ones():
    same = np.linspace(0.5, 1.5, 40)
    check = knowledge_check(same, same.copy(), threshold=0.2)
    # KS 1.0; Mann-Whitney's U is its mean (z = 0: p 0.5 one-sided, twice that 1)
    assert check.value == pytest.approx(1.0) and check.passed
    # Every forget ratio below every holdout one: D = 1, p = 2 / C(80, 40) (exact test).
    low, high = np.linspace(0.1, 0.5, 40), np.linspace(0.6, 1.5, 40)
    check = knowledge_check(low, high, threshold=0.2)
    assert check.value < 1e-20 and check.passed is False


def test_membership_fails_remembered_records_and_flags_over_forgotten_ones():
    members = np.arange(10.0)
    # AUC = P(forget score > holdout score): 1 when every forget record scores higher.
    assert membership_check(members + 100, members).value == 1.0
    assert membership_check(members - 100, members).value == 0.0
    assert membership_check(members, members).value == 0.5
    assert membership_check(members + 100, members).passed is False  # remembered
    over = membership_check(members - 100, members)
    assert over.passed is True and over.flag == "over_forgotten"
    assert membership_check(members - 100, members, two_sided=True).passed is False
    assert membership_check(members, members, two_sided=True).passed is True
    verdict = decide([over, utility_check(1.0, 0.95)])
    assert verdict.status == "forgotten" and "removal is detectable" in verdict.reason


def test_decide_says_forgotten_only_when_every_check_passes():
    good = [utility_check(1.0, 0.95), relearning_check(0.09, 0.1)]
    assert decide(good).status == "forgotten"
    bad = good + [utility_check(0.9, 0.95)]
    verdict = decide(bad)
    assert verdict.status == "not_forgotten" and "below the floor" in verdict.reason
    # relearning: 2.1x the holdout's unseen half after its own attack is more than 2x
    assert relearning_check(0.2, 0.1).passed and not relearning_check(0.21, 0.1).passed
    verdict = decide([relearning_check(0.21, 0.1)])
    assert verdict.status == "not_forgotten" and "relearning" in verdict.reason
    unknown = decide([utility_check(None, 0.95)])
    assert unknown.status == "not_verifiable"


def test_without_holdout_records_the_verdict_is_not_verifiable_and_says_what_to_supply():
    checks, missing = forgetting_checks({"truth_ratio": [1.0]}, None, threshold=0.2)
    verdict = decide(checks, missing=missing)
    assert verdict.status == "not_verifiable"
    assert "holdout" in verdict.reason and "never trained on" in verdict.reason


@pytest.fixture(scope="module")
def demo_verdicts(tiny_demo):
    from core.data.records import read_records
    from core.evaluation.probe import ProbeSets, probe_model
    from core.models.loading import load_model
    from core.spec import DEFAULT_PROMPT_TEMPLATE

    sets = ProbeSets(
        forget=read_records(tiny_demo.data["forget10"]),
        holdout=read_records(tiny_demo.data["holdout"]),
    )
    verdicts = {}
    for name in ("target", "retrain"):
        model, tokenizer = load_model(str(getattr(tiny_demo, name)), dtype="fp32")
        probe = probe_model(model, tokenizer, sets, template=DEFAULT_PROMPT_TEMPLATE, max_length=64)
        checks, missing = forgetting_checks(
            probe.columns["forget"], probe.columns["holdout"], threshold=0.2
        )
        verdicts[name] = decide(checks, missing=missing)
    return verdicts


def test_the_demo_target_is_not_forgotten(demo_verdicts):
    verdict = demo_verdicts["target"]
    assert verdict.status == "not_forgotten"
    assert verdict.check("knowledge").value < 1e-3
    assert verdict.check("membership").value > 0.9  # remembered, not over-forgotten


def test_the_demo_retrain_is_forgotten(demo_verdicts):
    verdict = demo_verdicts["retrain"]
    assert verdict.status == "forgotten", verdict.reason
    assert abs(verdict.check("membership").value - 0.5) < 0.2


def test_the_confirmation_check_fails_a_lone_passing_point_and_says_so():
    from core.evaluation.verdict import confirmation_check, decide

    lone = decide([confirmation_check(1, 2)])
    assert lone.status == "not_forgotten"
    assert "1 evaluation point(s) in a row, fewer than the 2" in lone.reason
    assert decide([confirmation_check(2, 2)]).status == "forgotten"


def test_the_reason_leaves_out_the_confirmation_when_other_checks_fail():
    from core.evaluation.verdict import confirmation_check, decide, utility_check

    verdict = decide([utility_check(0.9, 0.95), confirmation_check(0, 2)])
    assert verdict.status == "not_forgotten"
    assert verdict.reason == "utility 0.9x is below the floor 0.95x"
    assert [c.name for c in verdict.checks] == ["utility", "confirmation"]  # still listed


def test_a_missing_holdout_says_why_it_is_missing():
    checks, missing = forgetting_checks({}, None, threshold=0.05)
    assert checks == [] and missing == (
        f"no holdout set to compare the forget set with: {HOLDOUT_HELP}"
    )
    note = "3 of 3 holdout records are also in the forget or retain set"
    checks, missing = forgetting_checks({}, None, threshold=0.05, holdout_note=note)
    assert checks == [] and missing == f"{note}; {HOLDOUT_HELP}"
