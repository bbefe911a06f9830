"""``report.html`` from ``report.json``: Jinja2 templates in ``templates/``, and the few
values they need worked out here (the "In short" lines, the colour of each figure).

The page is static: no JavaScript, no external resources, images by bare file name (the
API serves a report's files side by side, and a downloaded report folder works offline).
It shows numbers only, never forget-set text or generated answers, so that the evidence
of a deletion is not itself a copy of the deleted data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape

from core.evaluation import metrics
from core.evaluation.evidence import checks as evidence_checks
from core.evaluation.evidence import interim_verdict
from core.evaluation.glossary import (
    ATTACK_LABELS,
    GLOSSARY,
    STRATA_TITLES,
    TERMS,
    format_value,
    range_label,
)
from core.evaluation.next_steps import part_words, report_utility

TEMPLATES = Path(__file__).parent / "templates"

#: the table "Metrics before and after", in this order
HEADLINE_ROWS = (
    "forget_quality",
    "model_utility",
    "forget_probability",
    "retain_probability",
    "forget_truth_ratio",
    "forget_rouge",
    "retain_rouge",
    "extraction_strength",
    "exact_memorization",
    "verbmem",
    "knowmem",
    "knowmem_retain",
)

STATUS_WORDS = {
    "forgotten": "Forgotten",
    "not_forgotten": "Not forgotten",
    "not_verifiable": "Not verifiable",
}


def environment(*extra_folders: Path) -> Environment:
    """The report's templates (and ``extra_folders`` first, for a page that includes
    the report's partials), with its filters."""
    env = Environment(
        loader=FileSystemLoader([*map(str, extra_folders), str(TEMPLATES)]),
        autoescape=select_autoescape(["html"]),
        # Reports of older schema versions lack newer fields: missing reads as empty.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = format_value
    env.filters["label"] = lambda key: GLOSSARY.get(key, {}).get("label", key)
    env.filters["status_words"] = lambda status: STATUS_WORDS.get(status, status)
    env.filters["is_number"] = _is_number
    env.globals.update(
        GLOSSARY=GLOSSARY,
        TERMS=TERMS,
        ATTACK_LABELS=ATTACK_LABELS,
        STRATA_TITLES=STRATA_TITLES,
        range_label=range_label,
    )
    return env


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verdict_of(report: dict) -> dict:
    """``summary.verdict``, or the interim one for a report written without it."""
    return (report.get("summary") or {}).get("verdict") or interim_verdict(report)


def check_results(verdict: dict, report: dict | None = None) -> dict[str, dict]:
    """What colours each figure on the page, by name: the evidence thresholds
    (``core.evaluation.evidence``: forget quality, PrivLeak, relearning recovery, utility
    against the oracle and the original) and the verdict's own checks."""
    evidence = {c["name"]: c for c in evidence_checks(report)} if report else {}
    return {**evidence, **{check["name"]: check for check in verdict.get("checks") or []}}


def in_short(report: dict, checks: dict[str, dict]) -> list[dict[str, Any]]:
    """The summary lines: ``{text, value, key, passed}`` (passed None: no threshold)."""
    summary = report.get("summary") or {}
    comparison = report.get("comparison") or {}
    models = comparison.get("models") or {}
    lines: list[dict[str, Any]] = []

    def line(text: str, key: str | None = None, value: Any = None) -> None:
        check = checks.get(key or "")
        lines.append(
            {"text": text, "key": key, "value": value, "passed": check and check["passed"]}
        )

    quality = summary.get("forget_quality")
    if quality is None:
        line(
            "Forget quality was not measured: "
            + (summary.get("forget_quality_reason") or "no oracle")
            + "."
        )
    else:
        samples = _forget_samples(report)
        pooled = summary.get("forget_quality_oracles") or 1
        tested = ""
        if len(samples) == 2 and pooled > 1:
            tested = (
                f" (KS test on {samples[0]} forget samples against {samples[1]} of {pooled} "
                "oracles pooled; against each alone: "
                + ", ".join(format_value(q) for q in summary.get("forget_quality_by_oracle") or [])
                + ")"
            )
        elif len(samples) == 2:
            tested = f" (KS test on {samples[0]} forget samples against the oracle's {samples[1]})"
        line(
            "Forget quality{value}"
            + tested
            + (
                ": no detectable difference from a model never trained on the forget set."
                if (checks.get("forget_quality") or {}).get("passed")
                else ": the unlearned model still differs from a model never trained on it."
            ),
            "forget_quality",
            quality,
        )
    before = (models.get("before") or {}).get("forget_probability")
    after = summary.get("forget_probability")
    if before is not None and after is not None:
        oracle = (models.get("oracle") or {}).get("forget_probability")
        target = f" (oracle: {format_value(oracle)})" if oracle is not None else ""
        line(
            f"Probability of the forget answers went from {format_value(before)} to "
            f"{format_value(after)}{target}."
        )
    utility, ratio = summary.get("model_utility"), summary.get("model_utility_ratio")
    if utility is not None:
        kept = f" ({ratio * 100:.0f}% of the original model's)" if ratio is not None else ""
        oracle = (summary.get("oracle_checks") or {}).get("utility_ratio")
        retrained = (
            f"; a model retrained without the forget set keeps {oracle * 100:.0f}%"
            if oracle is not None
            else ""
        )
        line(
            f"Model utility on data to keep: {format_value(utility)}{kept}{retrained}.",
            "model_utility_ratio",
        )
    leak = summary.get("privleak")
    if leak is not None:
        direction = (
            "forget data still detectable as trained-on"
            if leak > 0
            else "forget data detectable as never trained on (over-unlearned)"
        )
        line(
            "PrivLeak{value} (0 = as private as retraining; far from 0 either way is a "
            f"leak: here {direction}).",
            "privleak",
            leak,
        )
    elif summary.get("privleak_reason"):
        line("PrivLeak not measured: " + summary["privleak_reason"] + ".")
    recovery = checks.get("relearn_recovery")
    if recovery is not None:
        line(recovery["description"], "relearn_recovery")
    elif report.get("relearn"):
        line("Relearning attack: ran, but had no unseen forget samples to measure.")
    else:
        line("No relearning attack was run (evaluation.relearn).")
    return lines


def _forget_samples(report: dict) -> list[int]:
    """The forget samples the KS test compared: the model's, and the oracles' (those
    pooled: evaluated on the same forget set)."""
    evaluations = report.get("evaluations")
    if not isinstance(evaluations, dict) or not evaluations.get("after"):
        return []
    after = evaluations["after"]["sets"]["forget"]
    counted = [len(after["samples"]["index"])]
    oracles = [evaluations.get("oracle"), *(evaluations.get("more_oracles") or [])]
    if oracles[0]:
        counted.append(
            sum(
                len(each["sets"]["forget"]["samples"]["index"])
                for each in oracles
                if each and each["sets"]["forget"]["sha256"] == after["sha256"]
            )
        )
    return counted


def render_report(report: dict, plots: dict[str, str]) -> str:
    verdict = verdict_of(report)
    checks = check_results(verdict, report)
    return (
        environment()
        .get_template("report.html")
        .render(
            report=report,
            job=report.get("job") or {},
            verdict=verdict,
            checks=checks,
            in_short=in_short(report, checks),
            headline_rows=HEADLINE_ROWS,
            utility_rows=utility_rows(report),
            plots=plots,
        )
    )


def utility_rows(report: dict) -> list[dict[str, Any]]:
    """The table "Where utility went": each model utility value of the original, the
    unlearned model and the oracle, the unlearned over the original
    (``summary.utility_parts``) and the value's weight in the original's model utility
    (``metrics.utility_weights``), the largest loss first."""
    before, after, oracle = (
        metrics.flat_utility(report_utility(report, model))
        for model in ("before", "after", "oracle")
    )
    parts = (report.get("summary") or {}).get("utility_parts") or {}
    weights = metrics.utility_weights(report_utility(report, "before"))
    rows = []
    for part, ratio in parts.items():
        name, component = part_words(part)
        rows.append(
            {
                "part": part,
                "set": name,
                "component": component,
                "before": before.get(part),
                "after": after.get(part),
                "oracle": oracle.get(part),
                "ratio": ratio,
                "weight": weights.get(part),
            }
        )
    return sorted(rows, key=lambda row: row["ratio"])
