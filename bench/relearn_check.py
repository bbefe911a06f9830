"""Does the verdict's relearning check pass a model that never saw the forget set?

    python bench/relearn_check.py --preset bench-gpt2

Builds (or reuses) the preset's demo assets under ``--cache`` and runs the verdict's
relearning attack (``core.evaluation.relearn.relearn_probability``: AdamW steps on half
of forget10, as the benchmark's jobs run it, 5 at lr 1e-3) on the retrain oracle and on
the target, then prints the attacked models' probability of the other forget half and
of the holdout set, their ratio, and whether ``core.evaluation.verdict.relearning_check``
(a fixed limit, ``RELEARN_MAX_RATIO``) passes it. An oracle that fails means the limit
does not fit that model: questions about the same author teach each other more there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.encoding import encode_record_set  # noqa: E402
from core.data.records import read_records  # noqa: E402
from core.demo import build_demo_assets  # noqa: E402
from core.evaluation.relearn import relearn_probability  # noqa: E402
from core.evaluation.verdict import relearning_check  # noqa: E402
from core.models.loading import load_model  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bench-gpt2")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    args = parser.parse_args(argv)
    assets = build_demo_assets(args.cache / f"demo-{args.preset}", args.preset)
    holdout = read_records(assets.data["holdout"])
    for name in ("retrain", "target"):
        model, tokenizer = load_model(str(getattr(assets, name)), dtype="fp32")
        forget = encode_record_set(
            tokenizer,
            read_records(assets.data["forget10"]),
            max_length=512,
            template=DEFAULT_PROMPT_TEMPLATE,
        )
        unseen, held = relearn_probability(
            model,
            tokenizer,
            forget,
            holdout,
            template=DEFAULT_PROMPT_TEMPLATE,
            max_length=512,
            steps=args.steps,
            fraction=0.5,
            batch_size=8,
            learning_rate=args.learning_rate,
        )
        check = relearning_check(unseen, held)
        print(
            f"{args.preset} {name}: unseen forget half {unseen:.4g}, holdout {held:.4g}, "
            f"ratio {check.value:.2f} (limit {check.threshold}): "
            f"{'passes' if check.passed else 'fails'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
