"""GUARD (generation-time unlearning) on the demo: does a guard keep the forget set out
of the target's answers as well as the retrain oracle, while retain answers stay, and
what does guarded decoding cost?

    python bench/guard.py --out guard.json                # the demo preset (~1M parameters)
    python bench/guard.py --preset tiny                   # seconds, for a smoke run

Builds the demo assets (cached), builds a guard of forget10 on the target against
retain90 (``core.pipeline_guard``, the same code as a ``method: guard`` job), and
evaluates it on greedy generations (``core.evaluation.guard``) against the oracle:
forget ROUGE-L and KnowMem (unguarded, guarded, oracle), retain ROUGE-L, the
classifier's held-out precision and recall, the paraphrased-question attack, and
tokens/s without and with the guard. Goal (issue 12): forget ROUGE-L at or below the
oracle's, retain ROUGE-L >= 0.95x the original's, at <= 1.5x the unguarded latency.

``bench/minitofu.py --methods guard`` reports the same evaluation as a row beside the
training methods (``evaluate_demo_guard``, one guard per seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.demo import build_demo_assets  # noqa: E402
from core.pipeline_guard import build_guard_folder  # noqa: E402
from core.settings import Settings  # noqa: E402


def evaluate_demo_guard(assets, hyperparameters: dict | None = None) -> tuple[dict, dict]:
    """Build the guard of forget10 against retain90 on the demo target ``assets``
    (``core.demo.DemoAssets``) and evaluate it against the retrain oracle, in a
    throw-away service home; ``(manifest, evaluation)``."""
    models = {"demo-target": str(assets.target), "demo-retrain": str(assets.retrain)}
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(_env_file=None, home=Path(home), model_roots=[str(assets.root)])
        folder = Path(home) / "guard"
        manifest = build_guard_folder(
            "demo-target",
            assets.data["forget10"],
            assets.data["retain90"],
            folder,
            settings=settings,
            lookup=models.get,
            hyperparameters=hyperparameters,
            oracle="demo-retrain",
        )
        evaluation = json.loads((folder / "evaluation.json").read_text())
    return manifest, evaluation


def print_evaluation(evaluation: dict, title: str, log=print) -> None:
    speed = evaluation["seconds_per_token"]
    rows = [
        ("forget ROUGE-L", evaluation["forget_rouge_l"]),
        ("forget KnowMem", evaluation["forget_knowmem"]),
        ("retain ROUGE-L", evaluation["retain_rouge_l"]),
    ]
    log(title)
    log(f"{'':16} {'unguarded':>10} {'guarded':>10} {'oracle':>10}")
    for label, values in rows:
        cells = [values.get(k) for k in ("unguarded", "guarded", "oracle")]
        log(
            f"{label:16} "
            + " ".join(f"{c:10.3f}" if c is not None else f"{'-':>10}" for c in cells)
        )
    log(f"paraphrase attack ROUGE-L (guarded): {evaluation['paraphrase_attack_rouge_l']:.3f}")
    log(f"classifier held out: {evaluation['classifier']['holdout'][0]}")
    log(
        f"tokens/s: unguarded {1 / speed['unguarded']:.1f}, guarded {1 / speed['guarded']:.1f} "
        f"(latency x{speed['overhead']:.2f})"
    )
    log(f"verdict: {evaluation['verdict']['status']} ({evaluation['verdict']['reason']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="demo asset preset: tiny, demo, bench")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    assets = build_demo_assets(REPO / ".cache" / "bench" / f"demo-{args.preset}", args.preset)
    manifest, evaluation = evaluate_demo_guard(assets)
    print_evaluation(evaluation, f"GUARD on the {args.preset} demo: {manifest['spans']} spans")
    if args.out:
        args.out.write_text(json.dumps({"preset": args.preset, **evaluation}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
