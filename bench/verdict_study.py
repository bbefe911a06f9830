"""Trajectories for validating an oracle-free forgetting verdict.

    python bench/verdict_study.py --out verdict-study.json

Unlearns the mini-TOFU forget10 split with GA, GradDiff, NPO and SimNPO over a grid of
settings, and at the end of every epoch takes a full probe (forget, holdout, retain and
world-facts samples with truth ratios; no generation) and the oracle's forget quality
(KS test of forget-set truth ratios against the retrain model's). Every point is stored
with its per-sample columns, so candidate statistics can be computed afterwards
(``bench/verdict_validation.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from study_setup import MAX_LENGTH, load_study  # noqa: E402

from core.evaluation import metrics  # noqa: E402
from core.methods import get_method  # noqa: E402
from core.training.loop import Callbacks, run_training  # noqa: E402

COMMON = {
    "batch_size": 8,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "precision": "fp32",
    "max_length": MAX_LENGTH,
}
GRID = {
    "simnpo": {
        "learning_rate": [1e-4, 3e-4, 1e-3],
        "retain_coeff": [1.0, 5.0],
        "gamma": [0.0, 3.0],
        "beta": [1.0],
        "forget_coeff": [1.0],
    },
    "npo": {"learning_rate": [3e-4, 1e-3], "retain_coeff": [1.0]},
    "graddiff": {"learning_rate": [3e-4, 1e-3], "retain_coeff": [1.0, 5.0]},
    "ga": {"learning_rate": [1e-4, 3e-4]},
}
#: the regime of the first false "forgotten" in a job (docs/minitofu.md): SimNPO with
#: sharpness-aware updates at the automatic rate, run long enough to over-forget
SAM_GRID = {
    "simnpo": {
        "learning_rate": [3.1e-4],
        "retain_coeff": [5.0],
        "gamma": [3.0],
        "beta": [1.0],
        "forget_coeff": [1.0],
        "sam_rho": [0.3],
        "epochs": [40],
    },
}
#: the one SimNPO setting of the default grid that reaches oracle forget quality 0.5-0.7
#: at full utility inside the membership band on the GPT-2 benchmarks (docs/minitofu.md):
#: where a knowledge test must say "forgotten", for a quick look before the whole grid
SETTING_GRID = {
    "simnpo": {
        "learning_rate": [3e-4],
        "retain_coeff": [5.0],
        "gamma": [0.0],
        "beta": [1.0],
        "forget_coeff": [1.0],
    },
}
GRIDS = {"default": GRID, "sam": SAM_GRID, "setting": SETTING_GRID}


def settings(methods, grid_name="default"):
    for method in methods:
        grid = GRIDS[grid_name].get(method)
        if grid is None:
            continue
        for values in itertools.product(*grid.values()):
            yield method, dict(zip(grid, values))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("verdict-study.json"))
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="simnpo,npo,graddiff,ga")
    parser.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="default",
        help="sam: the over-forgetting regime; setting: the one SimNPO setting that reaches the oracle on GPT-2",
    )
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench")
    args = parser.parse_args(argv)

    study = load_study(args.cache, args.preset)
    tokenizer, forget, retain, probe = study.tokenizer, study.forget, study.retain, study.probe
    original, oracle = study.original, study.oracle
    oracle_tr = oracle.column("forget", "truth_ratio")
    out = {"original": original.to_dict(), "oracle": oracle.to_dict(), "runs": []}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        out["runs"] = previous.get("runs", [])
    done = {json.dumps([r["method"], r["seed"], r["hyperparameters"]]) for r in out["runs"]}

    for seed in [int(s) for s in args.seeds.split(",")]:
        for method, overrides in settings(args.methods.split(","), args.grid):
            hyperparameters = {**COMMON, "epochs": args.epochs, **overrides}
            key = json.dumps([method, seed, hyperparameters])
            if key in done:
                continue
            model = study.load("target")
            hparams = get_method(method).parse_hyperparameters(hyperparameters)
            points = []
            started = time.monotonic()

            def on_evaluation(point, points=points):
                measured = probe(point.model)
                fq = metrics.forget_quality(measured.column("forget", "truth_ratio"), oracle_tr)
                points.append(
                    {
                        "step": point.step,
                        "epoch": point.epoch,
                        "oracle_fq": fq,
                        **measured.to_dict(),
                    }
                )
                return False

            run_training(
                model,
                tokenizer,
                forget,
                retain,
                get_method(method),
                hparams,
                seed=seed,
                callbacks=Callbacks(on_evaluation=on_evaluation),
            )
            out["runs"].append(
                {
                    "method": method,
                    "seed": seed,
                    "hyperparameters": hyperparameters,
                    "seconds": round(time.monotonic() - started, 1),
                    "points": points,
                }
            )
            best = max(p["oracle_fq"] for p in points)
            print(
                f"{method} {overrides} seed {seed}: best oracle FQ {best:.3g} "
                f"({time.monotonic() - started:.0f}s)",
                flush=True,
            )
            args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
