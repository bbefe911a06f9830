"""The evaluation report: ``report.json`` (machine-readable, schema in docs/report.md),
``report.html`` (static, no JavaScript, no external resources) and PNG plots.

The HTML references its plots by bare file name, because the API serves every file of
a report from ``/v1/jobs/{id}/report/files/{name}``. The wording is written for a
compliance reader: each number says what it measures and which direction is good.
The HTML shows numbers only, never forget-set text or generated answers, so that the
evidence of a deletion is not itself a copy of the deleted data.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.evaluation.evaluate import HEADLINE_KEYS, EvaluationResult, _json_safe

#: version of report.json; bump the major on breaking changes (docs/report.md)
REPORT_SCHEMA_VERSION = "1.2"

#: label, what it measures, which direction is good; shown in the HTML and the JSON
GLOSSARY: dict[str, dict[str, str]] = {
    "forget_quality": {
        "label": "Forget quality",
        "meaning": "p-value of a Kolmogorov-Smirnov test comparing the model's truth ratios "
        "on the forget set with those of a model never trained on it (the oracle). Near 1: "
        "no detectable difference from never having seen the data; below 0.05: the model "
        "still behaves measurably differently from a retrained one.",
        "better": "higher",
    },
    "model_utility": {
        "label": "Model utility",
        "meaning": "Harmonic mean of answer probability, ROUGE-L recall and truth-ratio score "
        "on data the model must keep (retain and utility sets). Compare with the original "
        "model: unlearning should not cost much of it.",
        "better": "higher (close to the original model)",
    },
    "forget_probability": {
        "label": "Forget-set probability",
        "meaning": "Average per-token probability the model assigns to the true forget-set "
        "answers.",
        "better": "lower, down to about the oracle's value",
    },
    "retain_probability": {
        "label": "Retain-set probability",
        "meaning": "Average per-token probability of the true answers on data to keep.",
        "better": "higher (close to the original model)",
    },
    "forget_truth_ratio": {
        "label": "Forget truth-ratio score",
        "meaning": "mean(min(R, 1/R)), where R is how likely wrong answers are relative to a "
        "paraphrase of the right one. 1 means the model no longer prefers the right answer.",
        "better": "closer to the oracle's value",
    },
    "forget_rouge": {
        "label": "Forget ROUGE-L",
        "meaning": "ROUGE-L recall of the model's own (greedy) answers against the true "
        "forget answers: how much of each answer it still says when asked.",
        "better": "lower, down to about the oracle's value",
    },
    "retain_rouge": {
        "label": "Retain ROUGE-L",
        "meaning": "ROUGE-L recall of greedy answers on data to keep.",
        "better": "higher (close to the original model)",
    },
    "extraction_strength": {
        "label": "Extraction strength",
        "meaning": "1 - k/|y| for the shortest answer prefix (k tokens) after which the model "
        "reproduces the rest of a forget answer token by token. 0: nothing extractable.",
        "better": "lower",
    },
    "exact_memorization": {
        "label": "Exact memorization",
        "meaning": "Share of forget-answer tokens the model predicts exactly, given the "
        "question and the answer so far.",
        "better": "lower",
    },
    "mia_auc": {
        "label": "Membership-inference AUC",
        "meaning": "Chance that an attack rates a forget sample as more likely trained-on than "
        "a comparable sample that was never trained on (holdout). 0.5: indistinguishable.",
        "better": "closer to the oracle's value",
    },
    "privleak": {
        "label": "PrivLeak",
        "meaning": "(AUC - oracle AUC) / oracle AUC x 100 for the Min-K% attack (MUSE). "
        "0: as private as retraining; positive: the forget data is still detectable as "
        "trained-on; strongly negative: over-unlearned, which is detectable too.",
        "better": "closer to 0",
    },
    "verbmem": {
        "label": "Verbatim memorization (VerbMem)",
        "meaning": "ROUGE-L F1 x 100 of the model's continuation of the start of each forget "
        "text against the real continuation.",
        "better": "lower",
    },
    "knowmem": {
        "label": "Knowledge memorization (KnowMem, forget)",
        "meaning": "ROUGE-L F1 x 100 of greedy answers to questions about the forget data.",
        "better": "lower",
    },
    "knowmem_retain": {
        "label": "Knowledge memorization (KnowMem, retain)",
        "meaning": "ROUGE-L F1 x 100 of greedy answers to questions about data to keep.",
        "better": "higher (close to the original model)",
    },
}

#: metrics on a 0..1 scale, drawn side by side in metrics.png
_BAR_METRICS = (
    "forget_probability",
    "forget_truth_ratio",
    "forget_rouge",
    "extraction_strength",
    "retain_probability",
    "retain_rouge",
    "model_utility",
)
_ATTACK_LABELS = {
    "loss": "Loss",
    "zlib": "zlib",
    "min_k": "Min-K% (k=0.4)",
    "min_k_plus_plus": "Min-K%++",
}
_MODEL_COLORS = {"before": "#8c8c8c", "after": "#1f6feb", "oracle": "#2da44e"}
_MODEL_LABELS = {"before": "original", "after": "unlearned", "oracle": "oracle (retrain)"}


def _selection_rule() -> str:
    from core.training.target import SELECTION_RULE

    return SELECTION_RULE


# --- plots ------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_metric_bars(path: Path, models: dict[str, dict | None]) -> bool:
    present = [m for m in _BAR_METRICS if any(v and v.get(m) is not None for v in models.values())]
    if not present:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    shown = [name for name, values in models.items() if values]
    width = 0.8 / len(shown)
    for offset, name in enumerate(shown):
        heights = [models[name].get(m) or 0.0 for m in present]
        positions = np.arange(len(present)) + (offset - (len(shown) - 1) / 2) * width
        ax.bar(positions, heights, width, label=_MODEL_LABELS[name], color=_MODEL_COLORS[name])
    ax.set_xticks(np.arange(len(present)))
    ax.set_xticklabels([GLOSSARY[m]["label"] for m in present], rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Before / after unlearning (forget side: lower; retain side: higher)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=len(shown))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_truth_ratios(path: Path, results: dict[str, EvaluationResult | None]) -> bool:
    ratios = {}
    for name, result in results.items():
        if result is not None:
            column = result.sets["forget"].column("truth_ratio")
            if column is not None and np.isfinite(column).any():
                ratios[name] = np.log10(column[np.isfinite(column) & (column > 0)])
    if not ratios:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    everything = np.concatenate(list(ratios.values()))
    bins = np.linspace(everything.min(), everything.max() + 1e-9, 30)
    for name, values in ratios.items():
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=2,
            linestyle="--" if name == "before" else "-",
            label=_MODEL_LABELS[name],
            color=_MODEL_COLORS[name],
        )
    ax.axvline(0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("log10 truth ratio (wrong vs paraphrased right answer); 0 = no preference")
    ax.set_ylabel("forget samples")
    ax.set_title("Forget-set truth ratios: unlearned should match the oracle")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_series(
    path: Path, rows: Sequence[dict], keys: Sequence[str], title: str, ylabel: str
) -> bool:
    steps = [row.get("step") for row in rows]
    series = {}
    for key in keys:
        points = [
            (step, row.get("values", {}).get(key))
            for step, row in zip(steps, rows)
            if step is not None
        ]
        points = [(s, v) for s, v in points if isinstance(v, (int, float)) and math.isfinite(v)]
        if points:
            series[key] = points
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=key, marker="." if len(points) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plot_trajectory(path: Path, points: Sequence[dict], floor: float | None, selected) -> bool:
    """The evaluation points: forget vs holdout likelihood, the knowledge p-value and
    utility, with the published point marked."""
    if not points:
        return False
    steps = [p["step"] for p in points]

    def series(key: str) -> list[float]:
        return [
            (p.get("metrics") or {}).get(key)
            if isinstance((p.get("metrics") or {}).get(key), (int, float))
            else math.nan
            for p in points
        ]

    forget = [
        f if math.isfinite(f) else t
        for f, t in zip(series("forget_probability"), series("forget_probability_train"))
    ]
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(steps, forget, marker="o", label="forget answers", color="#cf222e")
    top.plot(
        steps,
        series("holdout_probability"),
        marker="o",
        label="holdout answers (never seen)",
        color="#8c8c8c",
    )
    top.set_ylabel("probability")
    top.set_title("Evaluation points: forget set against data never seen")
    right = top.twinx()
    knowledge = series("knowledge_p")
    if any(math.isfinite(v) for v in knowledge):
        right.plot(
            steps, knowledge, marker="s", linestyle="--", color="#1f6feb", label="knowledge p"
        )
        right.set_ylabel("knowledge p (forget vs holdout)")
        right.set_ylim(0, 1.05)
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(
        steps, series("utility_ratio"), marker="o", color="#2da44e", label="utility (x original)"
    )
    if floor is not None:
        bottom.axhline(floor, color="#2da44e", linestyle=":", label=f"floor {floor:g}x")
    bottom.set_ylabel("utility ratio")
    bottom.set_xlabel("optimizer step")
    bottom.legend(loc="lower left", fontsize=8)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        if selected is not None:
            axis.axvline(selected, color="black", linewidth=1, linestyle="-.")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _range_label(row: dict, name: str) -> str:
    if not row.get("range"):
        return "empty"
    lo, hi = row["range"]
    text = f"{lo:g}-{hi:g}" if name == "answer_length" else f"{lo:.3f}-{hi:.3f}"
    return text if lo != hi else (f"{lo:g}" if name == "answer_length" else f"{lo:.3f}")


def _plot_strata(path: Path, strata: dict[str, dict]) -> bool:
    panels = [(name, stratum["rows"]) for name, stratum in strata.items() if stratum["rows"]]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        shown = [
            m
            for m in _MODEL_LABELS
            if any(r.get(f"forget_probability_{m}") is not None for r in rows)
        ]
        width = 0.8 / max(1, len(shown))
        for offset, model in enumerate(shown):
            heights = [r.get(f"forget_probability_{model}") or 0.0 for r in rows]
            positions = np.arange(len(rows)) + (offset - (len(shown) - 1) / 2) * width
            ax.bar(
                positions,
                heights,
                width,
                label=_MODEL_LABELS[model],
                color=_MODEL_COLORS[model],
            )
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels([f"{_range_label(r, name)}\nn={r['n']}" for r in rows], fontsize=8)
        ax.set_title(_STRATA_TITLES[name], fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("forget probability")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


_STRATA_TITLES = {
    "answer_length": "by answer length (Q1 shortest)",
    "memorization_probability": "by original model's probability (Q1 least memorized)",
    "memorization_extraction": "by original model's extraction strength",
}


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .35em .6em; vertical-align: top; }
th { background: #f6f8fa; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.meaning { color: #57606a; max-width: 420px; }
.summary { background: #f6f8fa; border-left: 4px solid #1f6feb; padding: .6em 1.2em; }
.good { color: #1a7f37; font-weight: 600; } .bad { color: #cf222e; font-weight: 600; } .warn { color: #9a6700; font-weight: 600; }
.muted { color: #57606a; } img { max-width: 100%; border: 1px solid #d0d7de; margin: .5em 0; }
code { background: #f6f8fa; padding: 0 .2em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return "n/a"
        if key in ("privleak", "verbmem", "knowmem", "knowmem_retain") or abs(value) >= 100:
            return f"{value:.1f}"
        if isinstance(value, int):
            return str(value)
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}"
    return _esc(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(value: Any, key: str = "") -> str:
    return f'<td class="num">{_fmt(value, key)}</td>'


_VERDICT_WORDS = {
    "forgotten": ("good", "Forgotten"),
    "not_forgotten": ("bad", "Not forgotten"),
    "not_verifiable": ("warn", "Not verifiable"),
}


def _verdict_line(summary: dict) -> str | None:
    verdict = summary.get("verdict")
    if not verdict:
        return None
    css, word = _VERDICT_WORDS.get(verdict.get("status"), ("warn", verdict.get("status")))
    line = f'<b class="{css}">{_esc(word)}</b>: {_esc(verdict.get("reason"))}.'
    if summary.get("selected_step") is not None and summary.get("selection_rule"):
        met = "met" if summary.get("target_met") else "<b>not met</b>"
        line += (
            f" Target {met}; the published model is the one from step "
            f"{_esc(summary['selected_step'])}."
        )
    return line


def _summary_lines(report: dict) -> list[str]:
    comparison = report["comparison"]
    lines = []
    verdict = _verdict_line(report.get("summary") or {})
    if verdict:
        lines.append(verdict)
    fq = comparison.get("forget_quality")
    evaluations = report["evaluations"]
    samples = [
        len(evaluations[m]["sets"]["forget"]["samples"]["index"])
        for m in ("after", "oracle")
        if evaluations.get(m)
    ]
    tested_on = (
        f" (KS test on {samples[0]} forget samples against the oracle's {samples[1]})"
        if len(samples) == 2
        else ""
    )
    if fq is None:
        lines.append(
            "Forget quality was <b>not measured</b>: "
            + _esc(comparison.get("forget_quality_reason") or "no oracle")
            + "."
        )
    elif fq >= 0.05:
        lines.append(
            f'Forget quality <span class="good">{_fmt(fq)}</span>{tested_on}: on the forget '
            "set the unlearned model is statistically indistinguishable from a model never "
            "trained on it (p &ge; 0.05). This is an absence of evidence of a difference, "
            "which weighs more the more forget samples were tested."
        )
    else:
        lines.append(
            f'Forget quality <span class="bad">{_fmt(fq)}</span>{tested_on}: on the forget '
            "set the unlearned model still differs measurably from a model never trained on "
            "it (p &lt; 0.05): forgetting is incomplete, or overshoots."
        )
    before = comparison.get("models", {}).get("before") or {}
    oracle = comparison.get("models", {}).get("oracle") or {}
    fp_after, fp_before = comparison.get("forget_probability"), before.get("forget_probability")
    if fp_after is not None and fp_before is not None:
        target = (
            f" (oracle: {_fmt(oracle.get('forget_probability'))})"
            if oracle.get("forget_probability") is not None
            else ""
        )
        lines.append(
            f"Probability of the forget answers went from {_fmt(fp_before)} to "
            f"{_fmt(fp_after)}{target}."
        )
    mu, ratio = comparison.get("model_utility"), comparison.get("model_utility_ratio")
    if mu is not None:
        kept = f" ({ratio * 100:.0f}% of the original model's)" if ratio is not None else ""
        lines.append(f"Model utility on data to keep: {_fmt(mu)}{kept}.")
    leak = comparison.get("privleak")
    if leak is not None:
        lines.append(
            f"PrivLeak {_fmt(leak, 'privleak')} (0 = as private as retraining; positive = "
            "forget data still detectable as trained-on)."
        )
    elif comparison.get("privleak_reason"):
        lines.append("PrivLeak not measured: " + _esc(comparison["privleak_reason"]) + ".")
    return lines


def _headline_table(comparison: dict) -> str:
    models = comparison.get("models", {})
    rows = []
    for key in HEADLINE_KEYS:
        if key in ("mia_auc", "privleak"):
            continue
        values = [(models.get(m) or {}).get(key) for m in ("before", "after", "oracle")]
        if all(v is None for v in values):
            continue
        info = GLOSSARY[key]
        rows.append(
            [
                f"<td><b>{_esc(info['label'])}</b><br><code>{key}</code></td>",
                f'<td class="meaning">{_esc(info["meaning"])}</td>',
                f"<td>{_esc(info['better'])}</td>",
                *(_num(v, key) for v in values),
            ]
        )
    headers = ["metric", "what it measures", "better is", "original", "unlearned", "oracle"]
    return _table(headers, rows)


def _mia_table(comparison: dict) -> str:
    models = comparison.get("models", {})
    aucs = {m: (models.get(m) or {}).get("mia_auc") or {} for m in ("before", "after", "oracle")}
    if not aucs["after"]:
        return (
            "<p class='muted'>Not measured: "
            + _esc(comparison.get("privleak_reason") or "no holdout set")
            + ".</p>"
        )
    leak = comparison.get("privleak_by_attack") or {}
    rows = [
        [
            f"<td>{_esc(_ATTACK_LABELS.get(attack, attack))}</td>",
            *(_num(aucs[m].get(attack)) for m in ("before", "after", "oracle")),
            _num(leak.get(attack), "privleak"),
        ]
        for attack in aucs["after"]
    ]
    headers = ["attack", "AUC original", "AUC unlearned", "AUC oracle", "PrivLeak unlearned"]
    return _table(headers, rows)


def _strata_tables(comparison: dict) -> str:
    parts = []
    for name, stratum in (comparison.get("strata") or {}).items():
        title = f"<h3>{_esc(_STRATA_TITLES.get(name, name))}</h3>"
        note = f"<p class='muted'>{_esc(stratum['note'])}</p>" if stratum.get("note") else ""
        if not stratum["rows"]:
            parts.append(title + note)
            continue
        body = [
            [
                f"<td>Q{row['bin']}</td>",
                f"<td class='num'>{_esc(_range_label(row, name))}</td>",
                _num(row["n"]),
                _num(row.get("forget_quality")),
                _num(row.get("forget_probability_before")),
                _num(row.get("forget_probability_after")),
                _num(row.get("forget_probability_oracle")),
            ]
            for row in stratum["rows"]
        ]
        headers = [
            "quartile",
            "range",
            "samples",
            "forget quality",
            "prob. original",
            "prob. unlearned",
            "prob. oracle",
        ]
        parts.append(title + _table(headers, body) + note)
    return "".join(parts) or "<p class='muted'>No strata.</p>"


def _relearn_section(relearn: dict) -> str:
    """Forget metrics before and after the attack: on the relearned part of the forget
    set (``after_attack``) and, when given, on the part the attack never saw
    (``after_attack_unseen``), which is what tells hidden from removed knowledge."""
    # Like-for-like pairs where the report has them (1.1); 1.0 reports had one "before"
    # over the whole forget set.
    columns = {"before attack": relearn.get("before_attack") or {}}
    if relearn.get("before_attack_relearned"):
        columns = {"before attack (relearned samples)": relearn["before_attack_relearned"]}
    columns["after attack (relearned samples)"] = relearn.get("after_attack") or {}
    if relearn.get("before_attack_unseen"):
        columns["before attack (unseen samples)"] = relearn["before_attack_unseen"]
    if relearn.get("after_attack_unseen"):
        columns["after attack (unseen samples)"] = relearn["after_attack_unseen"]
    keys = {k for values in columns.values() for k, v in values.items() if _is_number(v)}
    ordered = [k for k in HEADLINE_KEYS if k in keys] + sorted(keys - set(HEADLINE_KEYS))
    rows = [
        [f"<td>{_esc(GLOSSARY.get(key, {}).get('label', key))}</td>"]
        + [_num(values.get(key), key) for values in columns.values()]
        for key in ordered
    ]
    settings = ", ".join(
        f"{_esc(k)}={_esc(v)}" for k, v in relearn.items() if not isinstance(v, (dict, list))
    )
    return (
        "<p>The unlearned model was fine-tuned briefly on part of the forget set "
        f"({settings}). If forget metrics move back towards the original model's, above "
        "all on samples the attack never saw, the knowledge was hidden rather than "
        "removed.</p>" + _table(["metric", *columns], rows)
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _job_table(job: dict) -> str:
    rows = [
        [f"<th>{_esc(key)}</th>", f"<td>{_esc(json.dumps(value, default=str))}</td>"]
        for key, value in job.items()
        if not isinstance(value, dict) or len(json.dumps(value, default=str)) < 300
    ]
    return _table(["field", "value"], rows) if rows else ""


def _render_html(report: dict, plots: dict[str, str]) -> str:
    comparison = report["comparison"]
    job = report["job"]
    title = f"Unlearning report{(' - job ' + str(job['id'])) if job.get('id') else ''}"

    def figure(key: str, caption: str) -> str:
        if key not in plots:
            return ""
        return f'<figure><img src="{_esc(plots[key])}" alt="{_esc(caption)}"><figcaption class="muted">{_esc(caption)}</figcaption></figure>'

    sections = [
        f"<h1>{_esc(title)}</h1>",
        f"<p class='muted'>Generated {_esc(report['generated_at'])} &middot; report schema "
        f"{_esc(report['schema_version'])}</p>",
        "<div class='summary'><h2 style='border:0;margin-top:.4em'>In short</h2><ul>"
        + "".join(f"<li>{line}</li>" for line in _summary_lines(report))
        + "</ul></div>",
        "<h2>Job</h2>" + _job_table(job),
        "<h2>Metrics before and after</h2><p>The <b>original</b> model is the one before "
        "unlearning, the <b>unlearned</b> one is the result, and the <b>oracle</b> is a model "
        "trained without the forget set: the target that unlearning should reach.</p>"
        + _headline_table(comparison)
        + figure("metrics", "Metrics of the original, unlearned and oracle models.")
        + figure("truth_ratio", "Distribution of forget-set truth ratios."),
        "<h2>Membership inference</h2><p>Can an attacker tell that the forget data was "
        "trained on? Each attack scores samples; the AUC is the chance that a forget sample "
        "scores as more likely trained-on than a never-seen holdout sample.</p>"
        + _mia_table(comparison),
        "<h2>Forgetting by stratum</h2><p>Forget quality and forget probability per quartile "
        "of answer length and of how strongly the original model had memorized each sample: "
        "uneven forgetting shows up here.</p>"
        + _strata_tables(comparison)
        + figure("strata", "Forget probability per stratum."),
    ]
    if "trajectory" in plots:
        sections.insert(
            3,
            "<h2>Evaluation points</h2><p>During training the job measured the forget set "
            "against holdout data it never saw and stopped once they looked alike with "
            "utility above the floor (or published the best point). The dash-dot line marks "
            "the published point.</p>"
            + figure("trajectory", "Forget vs holdout likelihood, knowledge p-value, utility."),
        )
    training = ""
    training += figure("training_loss", "Training losses.")
    training += figure("gradient_weights", "Per-sample gradient weights during unlearning.")
    if training:
        sections.append(
            "<h2>Training</h2><p>Losses over the unlearning run and, for NPO/SimNPO, the "
            "weight each forget sample's gradient received.</p>" + training
        )
    if report.get("relearn"):
        sections.append("<h2>Relearning attack</h2>" + _relearn_section(report["relearn"]))
    notes = comparison.get("notes") or []
    if notes:
        sections.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"
        )
    sections.append(
        "<p class='muted'>Per-sample statistics and every number above are in "
        "<code>report.json</code>.</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>"
    )


# --- entry point ------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    *,
    job: dict,
    before: EvaluationResult,
    after: EvaluationResult,
    oracle: EvaluationResult | None,
    comparison: dict,
    training_metrics: list[dict],
    relearn: dict | None = None,
    verdict: dict | None = None,
    target: dict | None = None,
    trajectory: list[dict] | None = None,
    selected_step: int | None = None,
    stopped: str | None = None,
    evaluation_cost: dict | None = None,
) -> dict[str, Path]:
    """Write report.json, report.html and the plots into ``out_dir``; returns
    ``{file name: path}`` of every file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plots: dict[str, str] = {}

    def plot(key: str, draw, *args) -> None:
        name = f"{key}.png"
        if draw(out / name, *args):
            plots[key] = name
            written[name] = out / name

    models = comparison.get("models") or {}
    plot("metrics", _plot_metric_bars, models)
    plot("truth_ratio", _plot_truth_ratios, {"before": before, "after": after, "oracle": oracle})
    plot(
        "training_loss",
        _plot_series,
        training_metrics,
        ("loss", "forget_loss", "retain_loss"),
        "Training losses",
        "loss",
    )
    plot(
        "gradient_weights",
        _plot_series,
        training_metrics,
        ("weight_mean", "weight_min", "weight_max"),
        "Per-sample gradient weights",
        "weight",
    )
    plot("strata", _plot_strata, comparison.get("strata") or {})
    plot(
        "trajectory",
        _plot_trajectory,
        trajectory or [],
        (target or {}).get("utility_floor"),
        selected_step,
    )

    summary: dict[str, Any] = {
        "verdict": verdict,
        "target_met": bool(verdict and verdict.get("target_met")),
        "selected_step": selected_step,
        "selection_rule": _selection_rule() if trajectory else None,
        "stopped": stopped,
    }
    summary.update({key: comparison.get(key) for key in HEADLINE_KEYS})
    for key in (
        "forget_quality_reason",
        "forget_quality_before",
        "forget_probability_before",
        "forget_rouge_before",
        "extraction_strength_before",
        "model_utility_ratio",
        "privleak_before",
        "privleak_reason",
    ):
        summary[key] = comparison.get(key)
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
        },
        "training": {"metrics": training_metrics, "evaluation_cost": evaluation_cost},
        "target": target,
        "trajectory": trajectory or [],
        "relearn": relearn,
        "glossary": GLOSSARY,
        "files": {"html": "report.html", "plots": plots},
    }
    report = _json_safe(report)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, allow_nan=False, default=str))
    written["report.json"] = json_path
    html_path = out / "report.html"
    html_path.write_text(_render_html(report, plots), encoding="utf-8")
    written["report.html"] = html_path
    return written
