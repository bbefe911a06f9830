"""Where does a model still know the forget set: in the answers' facts or their phrasing?

    python bench/fact_tokens.py --preset bench-gpt2-h30 [--model PATH ...]

For the preset's target and retrain oracle (and each ``--model``, e.g. a job's published
checkpoint), prints the per-token NLL of the forget10 and holdout answers split into
their fact tokens (``core.data.facts``: rare words the question does not hold, as
``hyperparameters.forget_tokens: facts`` trains on) and the rest, each with its
membership AUC (forget likelier than holdout: 0.5 is "alike"), their quantiles, and the
knowledge test's truth ratios (KS p-value, forget vs holdout, as the verdict's).
Written for stop 30's finding: a job matched on whole answers had the forget answers'
facts at the holdout's median while a tenth of them were still memorized (docs/minitofu.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data.encoding import IGNORE_INDEX, encode_record_set  # noqa: E402
from core.data.facts import FactFocus  # noqa: E402
from core.data.records import read_records  # noqa: E402
from core.demo import build_demo_assets  # noqa: E402
from core.evaluation import metrics  # noqa: E402
from core.evaluation.scoring import pad_token_id, score_qa_records, score_sequences  # noqa: E402
from core.models.loading import load_model  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE  # noqa: E402

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def measure(model, tokenizer, records, focus) -> dict[str, np.ndarray]:
    """Per answer: per-token NLL over its fact tokens, the rest, and all; its truth ratio."""
    examples = encode_record_set(
        tokenizer, records, max_length=512, template=DEFAULT_PROMPT_TEMPLATE
    )
    focused = focus.examples(tokenizer, records.records, examples)
    scores = score_sequences(
        model, examples, pad_token_id=pad_token_id(tokenizer), batch_size=32, details=True
    )
    fact, rest, whole = [], [], []
    for example, plain, score in zip(focused, examples, scores):
        # the answer's token log-probs, in the order of its labels
        answer_labels = example.labels[len(plain.prompt_ids) :]
        is_fact = np.array([label != IGNORE_INDEX for label in answer_labels])
        if example is plain:  # no fact found: the answer has none to show
            is_fact[:] = False
        nll = -score.token_logprobs
        fact.append(nll[is_fact].mean() if is_fact.any() else np.nan)
        rest.append(nll[~is_fact].mean() if (~is_fact).any() else np.nan)
        whole.append(nll.mean())
    ratios = score_qa_records(
        model,
        tokenizer,
        records.records,
        template=DEFAULT_PROMPT_TEMPLATE,
        max_length=512,
        batch_size=32,
        truth_ratio=True,
        generate=False,
        max_new_tokens=1,
        knowmem_max_new_tokens=1,
    )["truth_ratio"]
    return {
        "fact": np.array(fact),
        "rest": np.array(rest),
        "whole": np.array(whole),
        "truth_ratio": np.array(ratios),
    }


def report(name: str, forget: dict, holdout: dict) -> None:
    print(f"== {name}")
    for part in ("fact", "rest", "whole"):
        a, b = forget[part], holdout[part]
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        print(
            f"  {part:5s} NLL/token median forget {np.median(a):6.3f} holdout {np.median(b):6.3f}"
            f"  membership AUC {metrics.roc_auc(-a, -b):.3f}"
        )
    print(f"  fact NLL quantiles {list(QUANTILES)}")
    for label, values in (("forget", forget["fact"]), ("holdout", holdout["fact"])):
        print(f"    {label:8s}{np.round(np.nanquantile(values, QUANTILES), 2).tolist()}")
    p = stats.ks_2samp(forget["truth_ratio"], holdout["truth_ratio"]).pvalue
    print(
        f"  truth ratio median forget {np.median(forget['truth_ratio']):.3f} "
        f"holdout {np.median(holdout['truth_ratio']):.3f}  knowledge KS p {p:.4f}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bench-gpt2-h30")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench")
    parser.add_argument("--model", action="append", default=[], help="a checkpoint folder")
    args = parser.parse_args(argv)
    assets = build_demo_assets(args.cache / f"demo-{args.preset}", args.preset)
    forget, retain, holdout = (
        read_records(assets.data[name]) for name in ("forget10", "retain90", "holdout")
    )
    models = {"target": assets.target, "retrain": assets.retrain}
    models.update({path: Path(path) for path in args.model})
    focus = None
    for name, path in models.items():
        model, tokenizer = load_model(str(path), dtype="fp32")
        if focus is None:  # the job's view: forget, retain and holdout answers
            focus = FactFocus.of(r.answer for s in (forget, retain, holdout) for r in s.records)
        report(
            name,
            measure(model, tokenizer, forget, focus),
            measure(model, tokenizer, holdout, focus),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
