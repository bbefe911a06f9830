"""Where the oracle's forget truth ratios come from: records whose value the retained
data never holds, and the rest.

A truth ratio compares the right value of a record with wrong ones in the same
(paraphrased) sentence. A retrain oracle never saw the forget set, so where a forget
record's value is a word that only forget records hold (a year, a city no retained
author shares), the oracle has never seen that word at all and strongly prefers the
wrong values (ratio well above 1); where the value also occurs in the retained data
(a country, a genre), the oracle's preference follows how often it saw that value
elsewhere (ratio near 1). An unlearned model has to match both parts to reach the
oracle's forget quality, and the share of the first differs between asset builds.
This prints, per build, how many forget and holdout records fall in each part, and for
the original model, the oracle and any models given, the truth ratios per part, forget
quality against the oracle overall and per part, the verdict's knowledge check
(forget vs holdout) overall and on the shared-value part, and the forget quality the
model would have if its shared-value part were the oracle's (the cap its unseen-value
part sets); then the same forget truth ratios in the phrasing the model trained on
(the answer, and the answer with each wrong value in place of the right one).

    python bench/value_groups.py --preset bench --builds 0,1,2
    python bench/value_groups.py --preset demo --model job=out/checkpoint
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.records import Record  # noqa: E402
from core.evaluation.metrics import forget_quality  # noqa: E402
from core.evaluation.verdict import knowledge_check  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"\w+")
PERCENTILES = (5, 25, 50, 75, 95)


def words(text: str | None) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def value_words(record: Record) -> list[str]:
    """The words of a record's right value: those of its paraphrased answer that its
    first perturbed answer (the same sentence with a wrong value) does not hold."""
    wrong = set(words(record.perturbed_answers[0]))
    return [w for w in words(record.paraphrased_answer) if w not in wrong]


def value_span(right: str, wrong: str) -> tuple[str, str]:
    """The part of ``right`` that ``wrong`` (the same sentence with another value)
    replaces, and what replaces it, in whole words."""
    a, b = re.split(r"(\W+)", right), re.split(r"(\W+)", wrong)
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return "".join(a[start : len(a) - end]), "".join(b[start : len(b) - end])


def in_training_phrasing(record: Record) -> Record | None:
    """The record with its paraphrase replaced by its own answer and each wrong answer
    by the answer with the wrong value in place of the right one: a truth ratio in the
    phrasing the model trained on (None where the answer does not hold the value)."""
    wrong = []
    for perturbed in record.perturbed_answers:
        value, other = value_span(record.paraphrased_answer, perturbed)
        if not value or record.answer.count(value) != 1:
            return None
        wrong.append(record.answer.replace(value, other))
    return Record(
        prompt=record.prompt,
        answer=record.answer,
        line=record.line,
        paraphrased_answer=record.answer,
        perturbed_answers=wrong,
    )


def vocabulary(records: Iterable[Record]) -> Counter:
    """Word counts of the records' questions and answers: what a model trained on them saw."""
    counts: Counter = Counter()
    for record in records:
        counts.update(words(record.prompt))
        counts.update(words(record.answer))
    return counts


def unseen_values(records: Sequence[Record], retained: Counter) -> np.ndarray:
    """Per record: True where no word of its value occurs in the retained data."""
    values = [value_words(r) for r in records]
    return np.array([bool(v) and all(retained[w] == 0 for w in v) for v in values], dtype=bool)


def percentiles(values: np.ndarray) -> list[float] | None:
    return [round(float(v), 3) for v in np.percentile(values, PERCENTILES)] if len(values) else None


def _fq(values: np.ndarray, oracle: np.ndarray) -> float | None:
    return float(forget_quality(values, oracle)) if len(values) else None


def model_row(
    forget_tr,
    holdout_tr,
    oracle_tr,
    forget_unseen,
    holdout_unseen,
    threshold=0.2,
    trained=None,
    oracle_trained=None,
):
    """One model's figures per part (``*_unseen``: the records whose value the retained
    data never holds); ``trained`` / ``oracle_trained``: the forget truth ratios in the
    phrasing the model trained on (``in_training_phrasing``; NaN where none)."""
    seen, h_seen = ~forget_unseen, ~holdout_unseen
    phrasing = {}
    if trained is not None:
        ok = ~np.isnan(trained)
        phrasing = {
            "trained_phrasing_seen": percentiles(trained[ok & seen]),
            "trained_phrasing_unseen": percentiles(trained[ok & forget_unseen]),
            "forget_quality_trained_phrasing": _fq(trained[ok], oracle_trained[ok]),
        }
    return {
        **phrasing,
        "forget_seen": percentiles(forget_tr[seen]),
        "forget_unseen": percentiles(forget_tr[forget_unseen]),
        "holdout_seen": percentiles(holdout_tr[h_seen]),
        "holdout_unseen": percentiles(holdout_tr[holdout_unseen]),
        "forget_quality": _fq(forget_tr, oracle_tr),
        "forget_quality_seen": _fq(forget_tr[seen], oracle_tr[seen]),
        "forget_quality_unseen": _fq(forget_tr[forget_unseen], oracle_tr[forget_unseen]),
        # the most this model's unseen-value part allows: its shared part made the oracle's
        "forget_quality_cap": _fq(np.where(forget_unseen, forget_tr, oracle_tr), oracle_tr),
        "knowledge_p": knowledge_check(forget_tr, holdout_tr, threshold).value,
        "knowledge_p_seen": knowledge_check(forget_tr[seen], holdout_tr[h_seen], threshold).value,
    }


def truth_ratios(model, tokenizer, records: Sequence[Record]) -> np.ndarray:
    from core.evaluation.scoring import score_qa_records
    from core.spec import DEFAULT_PROMPT_TEMPLATE

    columns = score_qa_records(
        model,
        tokenizer,
        records,
        template=DEFAULT_PROMPT_TEMPLATE,
        max_length=512,
        batch_size=32,
        truth_ratio=True,
        generate=False,
        max_new_tokens=0,
        knowmem_max_new_tokens=0,
    )
    return np.asarray(columns["truth_ratio"], dtype=float)


def build_figures(root: Path, models: dict[str, Path]) -> dict:
    """The figures of one asset build (``root``: a demo assets folder)."""
    from core.data.records import read_records
    from core.models.loading import load_model

    def records(name: str) -> list[Record]:
        return list(read_records(root / "data" / f"{name}.jsonl").records)

    forget, holdout = records("forget10"), records("holdout")
    # what the oracle trained on (core/demo/build.py): retain90 and the world facts
    retained = vocabulary([*records("retain90"), *records("world_facts")])
    forget_unseen, holdout_unseen = (
        unseen_values(forget, retained),
        unseen_values(holdout, retained),
    )
    every = {"original": root / "models" / "target", "oracle": root / "models" / "retrain"}
    rephrased = [in_training_phrasing(r) for r in forget]
    kept = [i for i, r in enumerate(rephrased) if r is not None]
    ratios = {}
    for name, path in {**every, **models}.items():
        # the service's loader: a LoRA job's checkpoint (an adapter) is merged onto its base
        model, tokenizer = load_model(str(path), dtype="fp32")
        model.eval()
        trained = np.full(len(forget), np.nan)
        trained[kept] = truth_ratios(model, tokenizer, [rephrased[i] for i in kept])
        ratios[name] = (
            truth_ratios(model, tokenizer, forget),
            truth_ratios(model, tokenizer, holdout),
            trained,
        )
    oracle_forget, oracle_trained = ratios["oracle"][0], ratios["oracle"][2]
    return {
        "root": str(root),
        "forget_records": len(forget),
        "forget_unseen_values": int(forget_unseen.sum()),
        "holdout_records": len(holdout),
        "holdout_unseen_values": int(holdout_unseen.sum()),
        "models": {
            name: model_row(
                f,
                h,
                oracle_forget,
                forget_unseen,
                holdout_unseen,
                trained=t,
                oracle_trained=oracle_trained,
            )
            for name, (f, h, t) in ratios.items()
        },
    }


def _cell(values) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "-"


def _p(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_build(name: str, figures: dict) -> None:
    print(
        f"\n{name}: forget records whose value the retained data never holds "
        f"{figures['forget_unseen_values']}/{figures['forget_records']}, holdout "
        f"{figures['holdout_unseen_values']}/{figures['holdout_records']}"
    )
    pct = "/".join(str(p) for p in PERCENTILES)
    print(
        f"{'model':10} {'forget, shared value (' + pct + ')':30} {'forget, unseen value':26} "
        f"{'holdout, shared':26} {'FQ':>8} {'FQ shared':>9} {'FQ unseen':>9} "
        f"{'know p':>8} {'shared':>8} {'FQ cap':>8}"
    )
    for model, row in figures["models"].items():
        print(
            f"{model:10} {_cell(row['forget_seen']):30} {_cell(row['forget_unseen']):26} "
            f"{_cell(row['holdout_seen']):26} {_p(row['forget_quality']):>8} "
            f"{_p(row['forget_quality_seen']):>9} {_p(row['forget_quality_unseen']):>9} "
            f"{_p(row['knowledge_p']):>8} {_p(row['knowledge_p_seen']):>8} "
            f"{_p(row['forget_quality_cap']):>8}"
        )
    print("the same forget records, in the phrasing the model trained on:")
    print(f"{'model':10} {'shared value':30} {'unseen value':26} {'FQ':>8}")
    for model, row in figures["models"].items():
        print(
            f"{model:10} {_cell(row.get('trained_phrasing_seen')):30} "
            f"{_cell(row.get('trained_phrasing_unseen')):26} "
            f"{_p(row.get('forget_quality_trained_phrasing')):>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="bench", help="demo asset preset")
    parser.add_argument("--builds", default="0", help="comma-separated asset build seeds")
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO / ".cache" / "bench",
        help="where the assets are built (bench/minitofu.py's folders: reused)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another model (a job's checkpoint folder) to measure on the first build",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model {item!r}: give NAME=PATH")
        extra[name] = Path(path)

    from core.demo.build import build_demo_assets

    results = {}
    for i, build in enumerate(int(b) for b in args.builds.split(",")):
        suffix = f"-build{build}" if build else ""
        assets = build_demo_assets(
            args.cache / f"demo-{args.preset}{suffix}", args.preset, seed=build
        )
        name = f"{args.preset} build {build}"
        results[name] = build_figures(assets.root, extra if i == 0 else {})
        print_build(name, results[name])
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
