"""Thresholds on a report's evidence against the oracle, for colouring its figures, and
the answer a report written without a job verdict (before schema 1.2) falls back to.

The job's verdict is ``core.evaluation.verdict`` (no oracle needed, measured during
training and on the published model). Beside it the report still shows the evidence
that needs an oracle; each figure is coloured by these thresholds:

- **forgotten**: forget quality against the oracle (a model never trained on the forget
  set) passes, and no other measured check fails;
- **not_forgotten**: any measured check of forgetting fails: forget quality too low,
  membership detectable in either direction (|PrivLeak| too large), or a relearning
  attack brings the forgotten answers back on samples it never trained on;
- **not_verifiable**: nothing failed, but there was no oracle to compare against.

``interim_verdict(report)`` turns them into an answer in the shape of
``summary.verdict``, for reports that have none.
"""

from __future__ import annotations

from typing import Any

from core.evaluation.glossary import GLOSSARY

#: KS-test p-value against the oracle at or above which forget quality passes. Not the
#: customary 0.05: "no significant difference" at p = 0.057 is weak evidence, and the
#: cost of a wrong "forgotten" is higher than that of another epoch.
FORGET_QUALITY_MIN = 0.1
#: |PrivLeak| (percent of the oracle's AUC) above which membership is detectable: far
#: above 0 the forget data still reads as trained-on, far below it reads as
#: conspicuously *un*-trained-on (over-unlearning), which an attacker can see too.
PRIVLEAK_MAX_ABS = 10.0
#: Share of the removed forget-set probability that may come back on forget samples a
#: relearning attack never saw.
RELEARN_RECOVERY_MAX = 0.5
#: Share of the original model's utility the unlearned model should keep (shown, but
#: not part of "forgotten": a model can forget and still lose too much), where the job
#: has no target; a target's ``utility_floor`` takes its place.
UTILITY_RATIO_MIN = 0.9

STATUSES = ("forgotten", "not_forgotten", "not_verifiable")


def _check(
    name: str,
    value: float,
    threshold: float,
    passed: bool,
    rule: str,
    description: str,
    *,
    decides: bool = True,
) -> dict[str, Any]:
    return {
        "name": name,
        "label": GLOSSARY[name]["label"],
        "value": value,
        "threshold": threshold,
        "rule": rule,
        "passed": passed,
        "decides": decides,
        "description": description,
    }


def relearn_recovery(report: dict) -> float | None:
    """Share of the forget probability removed by unlearning that a relearning attack
    brings back on the forget samples it did not train on; None when not measured."""
    relearn = report.get("relearn") or {}
    before = (relearn.get("before_attack_unseen") or {}).get("forget_probability")
    after = (relearn.get("after_attack_unseen") or {}).get("forget_probability")
    original = (report.get("summary") or {}).get("forget_probability_before")
    if None in (before, after, original) or original <= before:
        return None
    return max(0.0, (after - before) / (original - before))


def checks(report: dict) -> list[dict[str, Any]]:
    """Every measured figure with its threshold and whether it passes."""
    summary = report.get("summary") or {}
    found = []
    quality = summary.get("forget_quality")
    if quality is not None:
        passed = quality >= FORGET_QUALITY_MIN
        found.append(
            _check(
                "forget_quality",
                quality,
                FORGET_QUALITY_MIN,
                passed,
                f">= {FORGET_QUALITY_MIN:g}",
                "On the forget set the unlearned model is statistically indistinguishable "
                "from the oracle."
                if passed
                else "On the forget set the unlearned model still differs measurably from "
                "a model never trained on it.",
            )
        )
    leak = summary.get("privleak")
    if leak is not None:
        passed = abs(leak) <= PRIVLEAK_MAX_ABS
        if passed:
            text = "Membership inference cannot tell the forget set apart any better than "
            text += "on the oracle."
        elif leak > 0:
            text = "Membership inference still detects the forget set as trained-on "
            text += "(under-unlearned)."
        else:
            text = "Membership inference detects the forget set as conspicuously "
            text += "never-trained-on (over-unlearned), which reveals it too."
        found.append(
            _check("privleak", leak, PRIVLEAK_MAX_ABS, passed, f"|x| <= {PRIVLEAK_MAX_ABS:g}", text)
        )
    recovery = relearn_recovery(report)
    if recovery is not None:
        passed = recovery <= RELEARN_RECOVERY_MAX
        found.append(
            _check(
                "relearn_recovery",
                recovery,
                RELEARN_RECOVERY_MAX,
                passed,
                f"<= {RELEARN_RECOVERY_MAX:g}",
                f"A relearning attack brought back {recovery:.0%} of the removed forget-set "
                "probability on samples it never saw"
                + (": the knowledge was removed, not hidden." if passed else ": it was hidden."),
            )
        )
    ratio = summary.get("model_utility_ratio")
    if ratio is not None:
        # a job with a target is held to its own floor, as its verdict is: the generic
        # 0.9 coloured a 0.92x job green beside a verdict that said "below the floor 0.95x"
        floor = ((report.get("job") or {}).get("target") or {}).get("utility_floor")
        floor = UTILITY_RATIO_MIN if floor is None else floor
        passed = ratio >= floor
        found.append(
            _check(
                "model_utility_ratio",
                ratio,
                floor,
                passed,
                f">= {floor:g}",
                f"The unlearned model kept {ratio:.0%} of the original model's utility.",
                decides=False,
            )
        )
    return found


def interim_verdict(report: dict) -> dict[str, Any]:
    """``summary.verdict`` from the evidence in ``report`` (its ``summary`` and
    ``relearn``): ``{status, forgotten, reason, checks}``."""
    found = checks(report)
    deciding = [check for check in found if check["decides"]]
    failed = [check for check in deciding if not check["passed"]]
    measured = {check["name"] for check in deciding}
    unmeasured = [
        label
        for name, label in (
            ("privleak", "membership inference (no holdout set)"),
            ("relearn_recovery", "a relearning attack"),
        )
        if name not in measured
    ]
    if failed:
        status = "not_forgotten"
        said = " ".join(check["description"] for check in failed)
        reason = "Not forgotten: " + said[0].lower() + said[1:]
    elif "forget_quality" not in measured:
        status = "not_verifiable"
        why = (report.get("summary") or {}).get("forget_quality_reason") or "no oracle was given"
        reason = (
            "Not verifiable: forgetting can only be shown against a model never trained on "
            f"the forget set (an oracle), and forget quality was not measured ({why})."
        )
    else:
        status = "forgotten"
        quality = next(check for check in deciding if check["name"] == "forget_quality")
        reason = (
            f"Forgotten: on the forget set the unlearned model is indistinguishable from a "
            f"model never trained on it (forget quality {quality['value']:.3g} >= "
            f"{FORGET_QUALITY_MIN:g})"
        )
        others = [check for check in deciding if check is not quality]
        if others:
            reason += (
                ", and "
                + " and ".join(
                    {"privleak": "membership inference", "relearn_recovery": "relearning"}[
                        check["name"]
                    ]
                    for check in others
                )
                + " found nothing"
            )
        reason += "."
        if unmeasured:
            reason += " Not checked: " + ", ".join(unmeasured) + "."
    return {
        "status": status,
        "forgotten": status == "forgotten",
        "reason": reason,
        "checks": found,
    }
