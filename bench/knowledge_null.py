"""How often does the knowledge check turn down a model that forgot perfectly?

A model that treats the forget set exactly like unseen data still shows a forget sample
of truth ratios that differs from the holdout's by chance. This draws both samples from
the same distribution (log-normal, the shape of the benchmark's truth ratios; the tests
are rank-based, so the shape does not matter) and prints, per statistic and threshold,
the share of draws the check would fail: its false "still knows" rate at a single point.

    python bench/knowledge_null.py                 # 120 forget and holdout records
    python bench/knowledge_null.py --sizes 40,120,400 --draws 4000

Statistics: KS alone (before stop 36), KS and two-sided Mann-Whitney (stop 36), KS and
one-sided Mann-Whitney, forget ratios lower (considered in stop 37), and KS with twice the
one-sided p-value (the two-sided test counting only the "still knows" direction: the
job's check since stop 37, ``core.evaluation.verdict.knowledge_check``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluation.verdict import knowledge_check  # noqa: E402


def statistics(forget: np.ndarray, holdout: np.ndarray) -> dict[str, float]:
    ks = float(stats.ks_2samp(forget, holdout).pvalue)
    two = float(stats.mannwhitneyu(forget, holdout, alternative="two-sided").pvalue)
    lower = float(stats.mannwhitneyu(forget, holdout, alternative="less").pvalue)
    return {
        "KS alone": ks,
        "KS, Mann-Whitney two-sided": min(ks, two),
        "KS, Mann-Whitney one-sided": min(ks, lower),
        "KS, 2x one-sided (the check)": knowledge_check(forget, holdout, 0.2).value,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="120", help="records per set, comma-separated")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--thresholds", default="0.1,0.2,0.3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rng = np.random.default_rng(args.seed)
    for size in (int(s) for s in args.sizes.split(",")):
        draws = [
            statistics(rng.lognormal(0, 0.3, size), rng.lognormal(0, 0.3, size))
            for _ in range(args.draws)
        ]
        print(f"\n{size} forget and {size} holdout records, {args.draws} draws")
        print(f"{'statistic':<42}" + "".join(f"{'p < ' + str(t):>10}" for t in thresholds))
        for name in draws[0]:
            rates = [np.mean([d[name] < t for d in draws]) for t in thresholds]
            print(f"{name:<42}" + "".join(f"{r:>10.1%}" for r in rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
