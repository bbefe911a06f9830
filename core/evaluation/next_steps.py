"""What to try when a job did not meet its target: one suggestion per reason the verdict
gave, each with what it rests on and the change to the job spec it means (``spec``: the
fields to set in the spec that ran, objects merged key by key; empty where there is
nothing to set). Jobs with a target only.

The suggestions come from the benchmark runs in docs/minitofu.md, the only evidence we
have; they are starting points for the next job, not promises. A met target gets none.
"""

from __future__ import annotations

import math
from typing import Any

from core.evaluation import metrics
from core.evaluation.verdict import HOLDOUT_HELP

#: the sharpness-aware SimNPO recipe of docs/minitofu.md: on mini-TOFU (Llama and GPT-2)
#: and the README demo it forgot more by the oracle's measure than the defaults, relearned
#: less, and kept utility
SIMNPO_RECIPE = {"forget_coeff": 1.0, "gamma": 3.0, "retain_coeff": 5.0, "sam_rho": 0.3}
SAM_RHO = 0.3
#: the budget the sharpness-aware recipe needed to pay off (it slows forgetting)
SAM_EPOCHS = 40
#: epochs added when continuing a job whose answers look unseen but come back under the
#: relearning attack: sharpness-aware updates from the point it reached (docs/minitofu.md,
#: "Sharpness-aware epochs after forgetting")
CONTINUE_EPOCHS = 10
#: issue 8's relearning goal: the unseen forget records at most this many times as likely
#: after the attack as in the retrained model under the same attack
ORACLE_RELEARN_TOLERANCE = 1.5


def next_steps(report: dict) -> list[dict[str, Any]]:
    """``[{reason, text, spec}]`` for a report whose verdict did not meet the target."""
    summary = report.get("summary") or {}
    verdict = summary.get("verdict") or {}
    job = report.get("job") or {}
    if not job.get("target") or summary.get("target_met") or verdict.get("status") == "forgotten":
        return []  # no target: a fixed recipe's report, judged by the evidence alone
    if verdict.get("status") == "not_verifiable" and HOLDOUT_HELP in (verdict.get("reason") or ""):
        return [
            _step(
                "holdout",
                "Nothing could say whether the model forgot: " + verdict["reason"],
                {"evaluation": {"holdout": "<dataset of unseen records>"}},
            )
        ]
    failed = {c["name"]: c for c in verdict.get("checks") or [] if c.get("passed") is False}
    hparams = job.get("hyperparameters") or {}
    budget = ((job.get("target") or {}).get("max_epochs")) or hparams.get("epochs") or 0
    steps: list[dict[str, Any]] = []

    membership = failed.get("membership")
    remembered = membership is not None and (membership.get("value") or 0) > 0.5
    over_forgotten = membership is not None and not remembered
    if remembered or (set(failed) == {"confirmation"}):
        steps.append(_longer(budget, remembered))
    if over_forgotten:
        rate = hparams.get("learning_rate")
        steps.append(
            _step(
                "membership",
                "The forget answers were pushed far below unseen data, which shows that "
                "something was removed: forget more gently, with half the learning rate; "
                "not measured on the benchmark.",
                {"hyperparameters": {"learning_rate": rate / 2}}
                if isinstance(rate, (int, float))
                else {},
            )
        )
    if "utility" in failed and (below := _oracle_below_floor(summary)) is not None:
        steps.append(below)
    if "utility" in failed:
        lost = utility_lost_most(report)
        steps.append(_keep_utility(job, hparams, lost))
        if lost and lost[0].startswith("utility/") and "retain" in (job.get("data") or {}):
            steps.append(_cover_in_retain(lost))
    if "relearning" in failed:
        vs_oracle = (report.get("relearn") or {}).get("unseen_probability_vs_oracle")
        # continued only where every other check passed (the answers look unseen)
        alone = set(failed) <= {"relearning", "confirmation"}
        steps.append(_sharpness(hparams, budget, vs_oracle, job.get("id") if alone else None))
    oracle_failed = _oracle_fails_knowledge(summary)
    if "knowledge" in failed and oracle_failed is not None:
        steps.append(_holdout_differs(oracle_failed))
    elif "knowledge" in failed and membership is None:
        steps.append(_still_knows(job, hparams, budget))
    unique: list[dict[str, Any]] = []
    for step in steps:  # one change answers two reasons: say it once
        if not step["spec"] or all(step["spec"] != u["spec"] for u in unique):
            unique.append(step)
    return unique


def _step(reason: str, text: str, spec: dict) -> dict[str, Any]:
    return {"reason": reason, "text": text, "spec": spec}


def _longer(budget: int, remembered: bool) -> dict[str, Any]:
    why = (
        "The forget answers are still likelier than unseen data"
        if remembered
        else "The verdict passed, but not at enough evaluation points in a row to confirm it"
    )
    if remembered:
        # docs/minitofu.md, "The recipe on the README's demo"
        why += (
            " (the README demo's job with 40 epochs instead of 20: oracle forget quality "
            "0.0023 -> 0.036, utility 0.93x -> 0.97x, membership AUC 0.75 -> 0.66; "
            "continuing the 20-epoch job to 40 with continue_from kept its utility below "
            "the floor, 0.89-0.90x)"
        )
    return _step(
        "membership" if remembered else "confirmation",
        f"{why}: run it again as a new job with twice the budget.",
        {"target": {"max_epochs": max(2 * budget, 1)}} if budget else {},
    )


def utility_lost_most(report: dict) -> tuple[str, float, float] | None:
    """``(set/component, unlearned / original, weight)`` of the utility value whose loss
    cost model utility most (``summary.utility_parts``; the weight is its share of the
    original's model utility, ``metrics.utility_weights``), or None where none fell."""
    parts = (report.get("summary") or {}).get("utility_parts") or {}
    weights = metrics.utility_weights(report_utility(report, "before"))
    cost = {
        part: weights[part] * (1.0 - ratio)
        for part, ratio in parts.items()
        if part in weights and ratio < 1.0
    }
    if not cost:
        return None
    part = max(cost, key=cost.get)
    return part, parts[part], weights[part]


COMPONENT_WORDS = {
    "probability": "answer probability",
    "rouge_recall": "ROUGE-L recall",
    "truth_ratio": "truth-ratio score",
}


def report_utility(report: dict, model: str) -> dict[str, dict[str, float]]:
    """A report's model utility values of ``model`` (``before``, ``after``, ``oracle``)."""
    evaluation = (report.get("evaluations") or {}).get(model) or {}
    return (evaluation.get("metrics") or {}).get("model_utility_components") or {}


def part_words(part: str) -> tuple[str, str]:
    """``(set, value)`` of a ``set/component`` key as a reader sees them:
    ``utility/world_facts/truth_ratio`` -> ``("world_facts", "truth-ratio score")``."""
    name, component = part.rsplit("/", 1)
    return name.removeprefix("utility/"), COMPONENT_WORDS.get(component, component)


def _where(lost: tuple[str, float, float] | None) -> str:
    if lost is None:
        return ""
    part, ratio, weight = lost
    name, component = part_words(part)
    return (
        f", most in the {component} of {name} ({ratio:.2f}x the original's; {weight:.0%} of "
        "model utility rests on it)"
    )


def _keep_utility(
    job: dict, hparams: dict, lost: tuple[str, float, float] | None = None
) -> dict[str, Any]:
    data = job.get("data") or {}
    where = _where(lost)
    if "retain" not in data or hparams.get("retain_loss") == "none":
        return _step(
            "utility",
            f"Utility fell below the floor{where} and nothing held it: give a retain set "
            "(data the model must keep) so that the method can train against forgetting it.",
            {"retain": "<dataset to keep>"},
        )
    if job.get("method") == "simnpo" and not _recipe_ran(hparams):
        return _step(
            "utility",
            f"Utility fell below the floor{where}: SimNPO's sharpness-aware recipe kept "
            "more of it (0.95-0.97x of the original's on the README demo against 0.93x "
            "with the defaults; 0.97-1.03x on mini-TOFU); a heavier retain term alone did "
            "not (retain_coeff 5: 0.88x on the demo; docs/minitofu.md).",
            {
                "hyperparameters": dict(SIMNPO_RECIPE),
                "target": {"max_epochs": SAM_EPOCHS},
            },
        )
    rate = hparams.get("learning_rate")
    return _step(
        "utility",
        f"Utility fell below the floor{where}: take smaller steps (half the learning rate), "
        "which trades forgetting speed for utility; not measured on the benchmark.",
        {"hyperparameters": {"learning_rate": rate / 2}} if isinstance(rate, (int, float)) else {},
    )


def _cover_in_retain(lost: tuple[str, float, float]) -> dict[str, Any]:
    """Utility fell most on an evaluation set the retain term never trains on."""
    name, _ = part_words(lost[0])
    return _step(
        "utility",
        f"The retain term trains on the retain set only, and utility fell most on "
        f"{name}, which it does not cover: add records like those of {name} (not the "
        "same ones, which would then measure nothing) to the retain set. On the mini-TOFU "
        "benchmark the world facts' truth-ratio score, near 0.1 and so most of model "
        "utility's weight, is where the sharpness-aware recipe lost it (docs/minitofu.md).",
        {"retain": f"<retain set with records like {name}>"},
    )


def _recipe_ran(hparams: dict) -> bool:
    return all(hparams.get(k) == v for k, v in SIMNPO_RECIPE.items())


def _sharpness(
    hparams: dict, budget: int, vs_oracle: float | None, continue_id: str | None
) -> dict[str, Any]:
    """``continue_id``: the job to continue, where only relearning failed."""
    if vs_oracle is not None and vs_oracle <= ORACLE_RELEARN_TOLERANCE:
        return _step(
            "relearning",
            "The relearning check failed, yet under the same attack the forget answers "
            f"came back only {vs_oracle:.2g}x as much as in the retrained model (the goal "
            f"allows {ORACLE_RELEARN_TOLERANCE:g}x). The check's reference is the holdout "
            "set under the same attack; with few holdout subjects it is a noisy stand-in "
            "for a retrained model: a larger holdout set, not a change to this job, is "
            "what would settle it.",
            {},
        )
    if continue_id and not hparams.get("sam_steer"):
        radius = hparams.get("sam_rho") or SAM_RHO
        return _step(
            "relearning",
            "The forget answers look unseen, but a short fine-tune brings them back: "
            f"continue this job for up to {CONTINUE_EPOCHS} more epochs with sharpness-aware "
            f"updates whose radius the evaluation points steer (sam_steer, from sam_rho "
            f"{radius:g}: raised while the relearning check fails, lowered if utility falls "
            "below the floor). On the thirty-author GPT-2 benchmark, after first jobs that "
            "held the forget answers at unseen data's likelihood (match_holdout), that met "
            "the target on two seeds of three (relearning 1.2-1.4x what the same attack does "
            "to a retrained model, utility 0.958-0.965x), where a fixed sam_rho 0.3 left one "
            "of them at 1.6x (docs/minitofu.md). Not under fsdp or deepspeed.",
            {
                "continue_from": continue_id,
                "hyperparameters": {"sam_rho": radius, "sam_steer": True},
                "target": {"max_epochs": budget + CONTINUE_EPOCHS},
            },
        )
    if not hparams.get("sam_rho"):
        return _step(
            "relearning",
            "A short fine-tune brings the forgotten answers back: with sharpness-aware "
            f"updates (sam_rho {SAM_RHO:g}) and a {SAM_EPOCHS}-epoch budget the README demo "
            "relearned to 1.9x of what the same attack does to a retrained model (4.7x "
            "without), and SimNPO's recipe to 0.8x on mini-TOFU (2x without); not under "
            "fsdp or deepspeed (docs/minitofu.md).",
            {
                "hyperparameters": {"sam_rho": SAM_RHO},
                "target": {"max_epochs": max(budget, SAM_EPOCHS)},
            },
        )
    if budget < SAM_EPOCHS:
        return _step(
            "relearning",
            "A short fine-tune brings the forgotten answers back, with sharpness-aware "
            f"updates on: they needed a {SAM_EPOCHS}-epoch budget to pay off on mini-TOFU.",
            {"target": {"max_epochs": SAM_EPOCHS}},
        )
    return _step(
        "relearning",
        "A short fine-tune brings the forgotten answers back, with sharpness-aware updates "
        f"and {budget} epochs: no setting measured on mini-TOFU did better (a larger sam_rho "
        "stopped forgetting altogether).",
        {},
    )


def oracle_check(summary: dict, name: str) -> dict | None:
    """The oracle's check ``name`` in a report summary (``summary.oracle_checks``)."""
    checks = (summary.get("oracle_checks") or {}).get("checks") or []
    return next((c for c in checks if c.get("name") == name), None)


def _oracle_below_floor(summary: dict) -> dict[str, Any] | None:
    """Where a model retrained without the forget set keeps less utility than the floor
    asks: the floor, not the unlearning, is what fails."""
    oracle = summary.get("oracle_checks") or {}
    ratio, floor = oracle.get("utility_ratio"), oracle.get("utility_floor")
    if ratio is None or floor is None or ratio >= floor:
        return None
    fair = math.floor(ratio * 100) / 100
    return _step(
        "utility",
        f"The retrain oracle, which never saw the forget set, keeps only {ratio:.3f}x of "
        f"the original's utility, under the floor {floor:g}x: retraining itself loses what "
        "the forget set taught beside the facts, so the floor asks more than a retrained "
        f"model keeps. A floor at or below the oracle's ({fair:g}x) judges this job as a "
        "retrained model would be judged.",
        {"target": {"utility_floor": fair}},
    )


def _oracle_fails_knowledge(summary: dict) -> dict | None:
    """The oracle's knowledge check where it failed."""
    check = oracle_check(summary, "knowledge")
    return check if check is not None and check["passed"] is False else None


def _holdout_differs(check: dict) -> dict[str, Any]:
    return _step(
        "knowledge",
        f"The retrain oracle, which never saw the forget set, fails the knowledge check "
        f"against this holdout set too (p {check['value']:.3g} < {check['threshold']:g}): "
        "the forget and holdout records differ by themselves, so a model that forgot as "
        "well as the oracle would not pass it either. Give a larger holdout set of records "
        "drawn like the forget set (more subjects), which narrows that difference; more "
        "training would only push the model past the oracle.",
        {"evaluation": {"holdout": "<a larger dataset of unseen records>"}},
    )


def _still_knows(job: dict, hparams: dict, budget: int) -> dict[str, Any]:
    text = (
        "The forget answers look like unseen data, yet the model still prefers the true "
        "values in paraphrases. On mini-TOFU no recipe removed that without pushing the "
        "answers far below unseen data (docs/minitofu.md)"
    )
    recipe_ran = _recipe_ran(hparams)
    if job.get("method") == "simnpo" and not recipe_ran:
        return _step(
            "knowledge",
            text + "; the sharpness-aware recipe forgot the most by a retrained model's "
            "measure there (10x to 1000x the defaults' forget quality) at the same utility.",
            {
                "hyperparameters": dict(SIMNPO_RECIPE),
                "target": {"max_epochs": max(budget, SAM_EPOCHS)},
            },
        )
    if recipe_ran:
        return _step("knowledge", text + ", this recipe included.", {})
    return _step(
        "knowledge",
        text + "; a SimNPO job with its sharpness-aware recipe came closest "
        f"(hyperparameters {SIMNPO_RECIPE}, {SAM_EPOCHS} epochs).",
        {},
    )
