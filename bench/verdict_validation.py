"""How well does an oracle-free statistic tell "forgotten"? Validation against the
oracle's forget quality on the mini-TOFU trajectories of ``bench/verdict_study.py``.

    python bench/verdict_study.py --out study.json --seeds 0,1   # the trajectories
    python bench/verdict_validation.py study.json                 # this analysis

For every evaluation point of every run, each candidate statistic is computed from
the model's own scores on the forget and holdout sets (no retrained model), and set
against the oracle's forget quality (KS test of truth ratios against the retrain
model's). Reported per candidate: Spearman rank correlation with log10 oracle forget
quality over all points, and at each threshold the false "forgotten" rate (points
called forgotten, with utility at the floor, whose oracle forget quality is below 0.05)
and the miss rate (points with oracle forget quality >= 0.5 not called forgotten).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.evaluation import metrics  # noqa: E402
from core.evaluation.probe import Probe  # noqa: E402
from core.evaluation.verdict import knowledge_check  # noqa: E402

FALSE_BELOW = 0.05
HIT_ABOVE = 0.5


def candidates(probe: Probe, original: Probe) -> dict[str, float]:
    """Every candidate statistic of one point (higher = more "like never seen").
    ``original``: the model before unlearning, whose holdout truth ratios are a
    reference that unlearning cannot move."""
    out = {}
    tr_f, tr_h = probe.column("forget", "truth_ratio"), probe.column("holdout", "truth_ratio")
    tr_o = original.column("holdout", "truth_ratio")
    out["tr_ks_p"] = float(stats.ks_2samp(tr_f, tr_h).pvalue)
    out["tr_mw_p"] = float(stats.mannwhitneyu(tr_f, tr_h).pvalue)
    # stop 36's knowledge check: both tests, the smaller p-value
    out["tr_ks_mw_p"] = min(out["tr_ks_p"], out["tr_mw_p"])
    # One-sided: only "the forget truth ratios are lower" (the model still prefers the
    # right answers) counts against forgetting; "greater": the forget sample's CDF lies
    # above the holdout's somewhere.
    out["tr_ks_p_knows"] = float(stats.ks_2samp(tr_f, tr_h, alternative="greater").pvalue)
    out["tr_mw_p_knows"] = float(stats.mannwhitneyu(tr_f, tr_h, alternative="less").pvalue)
    # KS either way, Mann-Whitney one-sided (considered in stop 37)
    out["tr_ks_mw1_p"] = min(out["tr_ks_p"], out["tr_mw_p_knows"])
    # the job's knowledge check since stop 37: KS either way, and Mann-Whitney's
    # two-sided p-value where the forget ratios lie lower (twice the one-sided one)
    out["tr_ks_mw_lower_p"] = knowledge_check(tr_f, tr_h, threshold=0.2).value
    out["tr_ks_p_original"] = float(stats.ks_2samp(tr_f, tr_o).pvalue)
    out["tr_ks_p_both"] = min(out["tr_ks_p"], out["tr_ks_p_original"])
    p_f, p_h = probe.column("forget", "probability"), probe.column("holdout", "probability")
    out["prob_ks_p"] = float(stats.ks_2samp(p_f, p_h).pvalue)
    out["prob_ratio"] = float(p_f.mean() / p_h.mean())
    for attack in metrics.MIA_ATTACKS:
        auc = metrics.roc_auc(
            probe.column("forget", f"mia_{attack}"), probe.column("holdout", f"mia_{attack}")
        )
        out[f"auc_{attack}"] = auc
        out[f"auc_{attack}_closeness"] = 1 - 2 * abs(auc - 0.5)
    return out


def spearman(xs, ys) -> float:
    return float(stats.spearmanr(xs, ys).statistic)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("study", type=Path, nargs="+")
    parser.add_argument("--utility-floor", type=float, default=0.9)
    args = parser.parse_args(argv)
    rows = []
    for path in args.study:
        study = json.loads(path.read_text())
        original = Probe.from_dict(study["original"])
        base_utility = original.utility()
        oracle = Probe.from_dict(study["oracle"])
        rows.append(
            {
                "run": "oracle",
                "oracle_fq": 1.0,
                "utility_ratio": oracle.utility() / base_utility,
                **candidates(oracle, original),
            }
        )
        rows.append(
            {
                "run": "original",
                "oracle_fq": 0.0,
                "utility_ratio": 1.0,
                **candidates(original, original),
            }
        )
        for number, run in enumerate(study["runs"]):
            for point in run["points"]:
                probe = Probe.from_dict(point)
                rows.append(
                    {
                        "run": f"{path.name}#{number} {run['method']} "
                        f"{run['hyperparameters']['learning_rate']:g} "
                        f"{run['hyperparameters'].get('retain_coeff', '')} seed {run['seed']}",
                        "epoch": point["epoch"],
                        "oracle_fq": point["oracle_fq"],
                        "utility_ratio": probe.utility() / base_utility,
                        **candidates(probe, original),
                    }
                )
    log_fq = [math.log10(max(r["oracle_fq"], 1e-30)) for r in rows]
    names = [k for k in rows[0] if k not in ("run", "epoch", "oracle_fq", "utility_ratio")]
    print(
        f"{len(rows)} points; oracle FQ >= {HIT_ABOVE}: {sum(r['oracle_fq'] >= HIT_ABOVE for r in rows)}"
    )
    print(f"{'statistic':<28}{'Spearman':>10}")
    for name in names:
        print(f"{name:<28}{spearman([r[name] for r in rows], log_fq):>10.3f}")
    floor = args.utility_floor
    for name, thresholds in (
        ("tr_ks_p", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_mw_p", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_ks_mw_p", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_ks_mw1_p", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_ks_mw_lower_p", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_ks_p_knows", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_mw_p_knows", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_ks_p_original", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("tr_ks_p_both", [0.05, 0.1, 0.2, 0.3, 0.5]),
        ("auc_min_k_plus_plus_closeness", [0.6, 0.7, 0.8, 0.9]),
        ("auc_loss_closeness", [0.6, 0.7, 0.8, 0.9]),
    ):
        for threshold in thresholds:
            called = [r for r in rows if r[name] >= threshold and r["utility_ratio"] >= floor]
            false = [r for r in called if r["oracle_fq"] < FALSE_BELOW]
            hits = [r for r in rows if r["oracle_fq"] >= HIT_ABOVE and r["utility_ratio"] >= floor]
            missed = [r for r in hits if r[name] < threshold]
            print(
                f"{name} >= {threshold}: called {len(called)}, false {len(false)} "
                f"({len(false) / max(len(called), 1):.0%}), missed {len(missed)}/{len(hits)}"
            )
    stopping(rows, floor)
    return 0


def stopping(rows, floor: float) -> None:
    """What a job would publish: per run, the first point that passes the knowledge
    test (with utility at the floor and the membership AUC at most 0.7, the verdict's
    other checks) at ``k`` points in a row (``target.confirm_points``)."""
    runs: dict[str, list[dict]] = {}
    for row in rows:
        if row["run"] not in ("oracle", "original"):
            runs.setdefault(row["run"], []).append(row)
    print(f"\nfirst call per run ({len(runs)} runs), oracle FQ at the call:")
    for statistic, k, threshold, sides in itertools.product(
        ("tr_ks_p", "tr_mw_p", "tr_ks_mw_p", "tr_ks_mw1_p", "tr_ks_mw_lower_p"),
        (1, 2, 3),
        (0.2, 0.3, 0.5),
        (1, 2),
    ):
        calls = []
        for points in runs.values():
            streak = 0
            for row in points:
                passes = (
                    row[statistic] >= threshold
                    and row["utility_ratio"] >= floor
                    and row["auc_loss"] <= 0.7
                    and (sides == 1 or row["auc_loss"] >= 0.3)
                )
                streak = streak + 1 if passes else 0
                if streak >= k:
                    calls.append(row["oracle_fq"])
                    break
        false = sum(fq < FALSE_BELOW for fq in calls)
        shown = " ".join(f"{fq:.2g}" for fq in sorted(calls))
        print(
            f"k {k}, {statistic} >= {threshold}, membership "
            f"{'one' if sides == 1 else 'two'}-sided: called {len(calls)}, false {false}, "
            f"FQ at the call: {shown}"
        )


if __name__ == "__main__":
    sys.exit(main())
