"""The report's plots (PNG, matplotlib's Agg backend): each function draws one figure
from report data and returns False, writing nothing, when that data is missing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.evaluation.evaluate import EvaluationResult
from core.evaluation.glossary import GLOSSARY, MODEL_LABELS, STRATA_TITLES, range_label

MODEL_COLORS = {"before": "#8c8c8c", "after": "#1f6feb", "oracle": "#2da44e"}

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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_bars(path: Path, models: dict[str, dict | None]) -> bool:
    present = [m for m in _BAR_METRICS if any(v and v.get(m) is not None for v in models.values())]
    if not present:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    shown = [name for name, values in models.items() if values]
    width = 0.8 / len(shown)
    for offset, name in enumerate(shown):
        heights = [models[name].get(m) or 0.0 for m in present]
        positions = np.arange(len(present)) + (offset - (len(shown) - 1) / 2) * width
        ax.bar(positions, heights, width, label=MODEL_LABELS[name], color=MODEL_COLORS[name])
    ax.set_xticks(np.arange(len(present)))
    ax.set_xticklabels([GLOSSARY[m]["label"] for m in present], rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title("Before / after unlearning (forget side: lower; retain side: higher)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=len(shown))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_truth_ratios(path: Path, results: dict[str, EvaluationResult | None]) -> bool:
    ratios = {}
    for name, result in results.items():
        if result is not None:
            column = result.sets["forget"].column("truth_ratio")
            if column is not None and np.isfinite(column).any():
                ratios[name] = np.log10(column[np.isfinite(column) & (column > 0)])
    if not ratios:
        return False
    plt = pyplot()
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
            label=MODEL_LABELS[name],
            color=MODEL_COLORS[name],
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


def plot_series(
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
    plt = pyplot()
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


def plot_strata(path: Path, strata: dict[str, dict]) -> bool:
    panels = [(name, stratum["rows"]) for name, stratum in strata.items() if stratum["rows"]]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels):
        shown = [
            m
            for m in MODEL_LABELS
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
                label=MODEL_LABELS[model],
                color=MODEL_COLORS[model],
            )
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels([f"{range_label(r, name)}\nn={r['n']}" for r in rows], fontsize=8)
        ax.set_title(STRATA_TITLES[name], fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("forget probability")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_trajectory(
    path: Path, points: Sequence[dict], floor: float | None = None, selected: int | None = None
) -> bool:
    """The evaluation points of training (``report["trajectory"]``): forget against
    holdout likelihood with the knowledge p-value above, utility against its floor
    below (with the sharpness-aware radius where ``sam_steer`` steered it); points whose
    verdict said forgotten are shaded, the published one marked."""
    points = [p for p in points if isinstance(p, dict) and p.get("step") is not None]
    if not points:
        return False
    steps = [p["step"] for p in points]

    def series(key: str) -> list[float]:
        values = [(p.get("metrics") or {}).get(key) for p in points]
        return [v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]

    # Verdict points measure afresh; light ones take the training pass's likelihoods
    # and have the retain likelihood ratio where utility was not measured.
    forget = series("forget_probability")
    utility = [
        u if math.isfinite(u) else r
        for u, r in zip(series("utility_ratio"), series("retain_ratio"))
    ]
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(steps, forget, marker="o", color="#cf222e", label="forget answers")
    top.plot(
        steps,
        series("holdout_probability"),
        marker="o",
        color="#6e7781",
        label="holdout answers (never trained on)",
    )
    top.set_ylabel("answer probability")
    top.set_title("Evaluation points: the forget set against data never seen")
    knowledge = series("knowledge_p")
    if any(math.isfinite(v) for v in knowledge):
        right = top.twinx()
        right.plot(
            steps, knowledge, marker="s", linestyle="--", color="#0969da", label="knowledge p"
        )
        right.set_ylabel("knowledge p (forget vs holdout)")
        right.set_ylim(0, 1.05)
        right.legend(loc="center right", fontsize=8)
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(steps, utility, marker="o", color="#1a7f37", label="utility (x original)")
    if floor is not None:
        bottom.axhline(floor, color="#1a7f37", linestyle=":", label=f"floor {floor:g}x")
    bottom.set_ylabel("utility kept")
    bottom.set_xlabel("optimizer step")
    bottom.legend(loc="lower left", fontsize=8)
    radius = series("sam_rho")  # under sam_steer: each point's, for the steps before it
    if any(math.isfinite(v) for v in radius):
        twin = bottom.twinx()
        twin.step(
            steps, radius, where="pre", color="#8250df", label="sharpness-aware radius (sam_rho)"
        )
        twin.set_ylabel("sam_rho (steered)")
        twin.set_ylim(0, 1.25 * max(v for v in radius if math.isfinite(v)))
        twin.legend(loc="lower right", fontsize=8)
    forgotten = [p["step"] for p in points if (p.get("verdict") or {}).get("status") == "forgotten"]
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        for step in forgotten:
            axis.axvline(step, color="#1a7f37", alpha=0.2, linewidth=6)
        if selected is not None:
            axis.axvline(selected, color="black", linewidth=1, linestyle="-.")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
