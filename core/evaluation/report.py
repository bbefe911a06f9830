"""The evaluation report: ``report.json`` (machine-readable, schema in docs/report.md),
with ``report.html`` (``report_html``, Jinja2 templates) and PNG plots (``plots``)
written beside it.

The report opens with its verdict (``summary.verdict``): the job's (``core.evaluation
.verdict``, on the published model), else ``evidence.interim_verdict`` worked out from
the evidence below it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from core.evaluation import metrics
from core.evaluation import plots as draw
from core.evaluation.evaluate import HEADLINE_KEYS, EvaluationResult, _json_safe
from core.evaluation.evidence import interim_verdict
from core.evaluation.glossary import GLOSSARY
from core.evaluation.next_steps import next_steps
from core.evaluation.report_html import render_report

#: version of report.json; bump the major on breaking changes (docs/report.md)
REPORT_SCHEMA_VERSION = "1.6"

#: summary fields besides the headline metrics
SUMMARY_EXTRA_KEYS = (
    "forget_quality_reason",
    "forget_quality_before",
    "forget_probability_before",
    "forget_rouge_before",
    "extraction_strength_before",
    "model_utility_ratio",
    "privleak_before",
    "privleak_reason",
    # with several oracles (``evaluation.oracle`` a list): forget quality against each
    # alone, and how many were pooled for ``forget_quality``
    "forget_quality_by_oracle",
    "forget_quality_oracles",
)


def write_report(
    out_dir: str | Path,
    *,
    job: dict,
    before: EvaluationResult,
    after: EvaluationResult,
    oracle: EvaluationResult | None,
    comparison: dict,
    more_oracles: list[EvaluationResult] | None = None,
    training_metrics: list[dict],
    relearn: dict | None = None,
    verdict: dict | None = None,
    oracle_checks: dict | None = None,
    evaluation_points: list[dict] | None = None,
    target: dict | None = None,
    selected_step: int | None = None,
    stopped: str | None = None,
    evaluation_cost: dict | None = None,
) -> dict[str, Path]:
    """Write report.json, report.html and the plots into ``out_dir``; returns
    ``{file name: path}`` of every file written. ``verdict``: the job's verdict on the
    published model (``summary.verdict``, with ``target_met``); None: the interim one
    from this evidence. ``oracle_checks``: the retrain oracle under the same forgetting
    checks (``verdict.oracle_checks``). ``evaluation_points``: the points evaluated
    during training (``report["trajectory"]``), ``selected_step`` the one published,
    ``target`` what the job aimed at, ``stopped`` why training ended early,
    ``evaluation_cost`` what the points cost. ``more_oracles``: the oracles after the
    first whose truth ratios forget quality pooled (``evaluations.more_oracles``, so the
    figure can be recomputed from the report)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}

    def plot(key: str, drawing, *args) -> None:
        name = f"{key}.png"
        if drawing(out / name, *args):
            plots[key] = name
            written[name] = out / name

    models = comparison.get("models") or {}
    plot("metrics", draw.plot_metric_bars, models)
    plot(
        "truth_ratio",
        draw.plot_truth_ratios,
        {"before": before, "after": after, "oracle": oracle},
    )
    plot(
        "training_loss",
        draw.plot_series,
        training_metrics,
        ("loss", "forget_loss", "retain_loss"),
        "Training losses",
        "loss",
    )
    plot(
        "gradient_weights",
        draw.plot_series,
        training_metrics,
        ("weight_mean", "weight_min", "weight_max"),
        "Per-sample gradient weights",
        "weight",
    )
    plot("strata", draw.plot_strata, comparison.get("strata") or {})
    if evaluation_points:
        plot(
            "trajectory",
            draw.plot_trajectory,
            evaluation_points,
            (target or {}).get("utility_floor"),
            selected_step,
        )

    summary: dict = {
        "verdict": None,
        "target_met": bool(verdict and verdict.get("target_met")),
        "selected_step": selected_step,
        "selection_rule": _selection_rule() if evaluation_points else None,
        "stopped": stopped,
    }
    summary.update({key: comparison.get(key) for key in (*HEADLINE_KEYS, *SUMMARY_EXTRA_KEYS)})
    summary["utility_parts"] = _utility_parts(before, after)
    summary["oracle_checks"] = oracle_checks
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "job": job,
        "summary": summary,
        "comparison": comparison,
        "evaluations": {
            "before": before.to_dict(),
            "after": after.to_dict(),
            "oracle": oracle.to_dict() if oracle is not None else None,
            **({"more_oracles": [each.to_dict() for each in more_oracles]} if more_oracles else {}),
        },
        "training": {"metrics": training_metrics, "evaluation_cost": evaluation_cost},
        "target": target,
        "trajectory": evaluation_points or [],
        "relearn": relearn,
        "glossary": GLOSSARY,
        "files": {"html": "report.html", "plots": plots},
    }
    report = _json_safe(report)
    report["summary"]["verdict"] = _json_safe(verdict) if verdict else interim_verdict(report)
    report["summary"]["next_steps"] = next_steps(report)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, allow_nan=False, default=str))
    written["report.json"] = json_path
    html_path = out / "report.html"
    html_path.write_text(render_report(report, plots), encoding="utf-8")
    written["report.html"] = html_path
    return written


def _utility_parts(before: EvaluationResult, after: EvaluationResult) -> dict[str, float]:
    """The unlearned model's utility values over the original's (``metrics.utility_parts``)."""
    ours = after.metrics.get("model_utility_components") or {}
    theirs = before.metrics.get("model_utility_components") or {}
    return metrics.utility_parts(ours, theirs)


def _selection_rule() -> str:
    from core.training.target import SELECTION_RULE

    return SELECTION_RULE
