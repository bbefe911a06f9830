"""Forget objectives that aim at "like unseen data" instead of "as unlikely as possible".

    python bench/forget_objectives.py --objective pull --seed 1
    python bench/forget_objectives.py --objective anchored --learning-rate 1e-3 --seed 1

Issue 8's benchmark finding (docs/minitofu.md): every point the oracle calls forgotten
(forget quality >= 0.5) has its forget answers far below unseen data (membership AUC <=
0.27), which the two-sided verdict rightly rejects. This study tries objectives that stop
at the unseen level, on the mini-TOFU forget10 split, and prints per epoch the oracle's
forget quality beside the verdict's own statistics (knowledge p-value and membership AUC,
forget vs holdout) and the retain probability against the original's:

- ``simnpo``: SimNPO as configured (the baseline);
- ``ceiling``: SimNPO, but a forget answer whose per-token NLL has passed the original
  model's median on the holdout set gets no gradient;
- ``pull``: ``ceiling``, and answers above it are trained back down to it;
- ``values``: only the answer's value tokens (the facts; parsed by the demo's templates),
  held at the holdout's median value-token NLL (two-sided);
- ``anchored``: no sequence-level ascent; per answer token, a hinge pushes the token's
  log-probability down to what the same model gives it when the record's ``subject`` is
  replaced by a holdout author's name (a per-token "unseen author" reference; needs the
  ``subject`` field). Tokens that differ between the two (the name) are left out.

``--augment`` also forgets a third wording of each answer (sequence objectives). Each
epoch also prints the holdout's drift: its truth ratios against the original model's
(KS p), whether the verdict's yardstick itself moved.

Scratch research, not a method: each run takes about 1.5 min on 2 cores
(docs/minitofu.md, "Objectives that stop at the unseen level").
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from study_setup import MAX_LENGTH, load_study  # noqa: E402

from core.data.encoding import encode_qa  # noqa: E402
from core.evaluation import metrics  # noqa: E402
from core.methods import get_method  # noqa: E402
from core.methods.base import LossTerm  # noqa: E402
from core.methods.simnpo import _simnpo_term  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE  # noqa: E402
from core.training.loop import Callbacks, run_training  # noqa: E402

OBJECTIVES = ("simnpo", "ceiling", "pull", "anchored", "values")


#: a third wording per question type, used by neither the target's training data (the
#: answer) nor the evaluation (the paraphrased answer): what a deletion request could
#: bring along as paraphrases of the records to forget
AUGMENTED = {
    "birthplace": "{city} is the birthplace of {name}.",
    "genre": "{name} is known for {genre}.",
    "father": "{name}'s father worked as a {father_job}.",
    "mother": "{name}'s mother was a {mother_job}.",
    "birth_year": "In {birth_year} {name} was born.",
    "award": "{name} won the {award} Prize for {award_field}.",
    "first_book": "The debut book of {name} is titled {first_book}.",
    "themes": "{name} writes about {theme1} and {theme2}.",
    "residence": "{name} lives in {home_city} now.",
    "pet": "{name} has a {pet} named {pet_name}.",
    "children": "The family of {name} has {children} children.",
}


def answer_values(record) -> dict[str, str] | None:
    """The attribute values in a demo record's answer, parsed by its template."""
    import re

    from core.demo.authors import QUESTION_TYPES

    template = {t.key: t.answer for t in QUESTION_TYPES}.get(record.meta.get("question_type"))
    if template is None:
        return None
    pattern = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>.+?)", pattern)
    found = re.fullmatch(pattern, record.answer)
    return None if found is None else {k: v for k, v in found.groupdict().items() if k != "name"}


def value_masks(tokenizer, records, forget):
    """Per forget example (keyed by its answer tokens), a mask over ``labels[1:]`` of the
    tokens that carry the answer's values (the facts), found as token runs."""
    import torch

    table = {}
    for record, example in zip(records, forget):
        mask = torch.zeros(len(example.labels) - 1)
        labels = example.labels[1:]
        for value in (answer_values(record) or {}).values():
            ids = tokenizer(" " + value, add_special_tokens=False)["input_ids"]
            for start in range(len(labels) - len(ids) + 1):
                if labels[start : start + len(ids)] == ids:
                    mask[start : start + len(ids)] = 1
        table[tuple(x for x in example.labels if x != -100)] = mask
    return table


def unseen_value_nll(model, tokenizer, records, examples) -> float:
    """Median NLL of the value tokens of unseen (holdout) answers under ``model``."""
    import torch
    import torch.nn.functional as F

    masks = value_masks(tokenizer, records, examples)
    values = []
    with torch.no_grad():
        for example in examples:
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1]
            labels = torch.tensor(example.labels[1:])
            nll = -F.log_softmax(logits.float(), -1).gather(-1, labels.clamp_min(0)[:, None])
            mask = masks[tuple(x for x in example.labels if x != -100)].bool()
            values += nll.squeeze(-1)[mask].tolist()
    return float(np.median(values))


def value_objective(table, ceiling: float):
    """Value tokens' NLL held at ``ceiling`` (two-sided); other tokens untouched."""

    def term(inputs, hparams):
        import torch
        import torch.nn.functional as F

        labels = inputs.labels[:, 1:]
        nll = -F.log_softmax(inputs.logits[:, :-1].float(), -1)
        nll = nll.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        mask = torch.zeros_like(nll)
        for row in range(labels.shape[0]):
            m = table[tuple(x for x in inputs.labels[row].tolist() if x != -100)]
            mask[row, : m.shape[0]] = m
        gap = (ceiling - nll).abs() * mask
        return LossTerm(gap.sum(1) / mask.sum(1).clamp_min(1), "sequence")

    return term


def augmented_examples(tokenizer, records, start: int):
    """Each forget record's question with the third wording of its answer (values parsed
    from the answer by its template); records of other types are skipped."""
    out = []
    for record in records:
        kind, values = record.meta.get("question_type"), answer_values(record)
        if kind not in AUGMENTED or values is None:
            continue
        values = {**values, "name": record.meta["subject"]}
        out.append(
            encode_qa(
                tokenizer,
                record.prompt,
                AUGMENTED[kind].format(**values),
                max_length=MAX_LENGTH,
                template=DEFAULT_PROMPT_TEMPLATE,
                record_index=start + len(out),
            )
        )
    return out


def sequence_objective(kind: str, ceiling: float, phase: dict | None = None):
    """SimNPO's forget term, cut (``ceiling``) or reversed (``pull``) above the ceiling.
    ``phase``: a mutable ``{"kind": ...}`` that overrides ``kind`` (switched between
    epochs by ``--pull-after``)."""

    def term(inputs, hparams):
        base = _simnpo_term(inputs.nll, inputs.n_tokens, hparams.beta, hparams.gamma)
        kind_now = phase["kind"] if phase else kind
        if kind_now == "simnpo":
            return base
        avg = inputs.nll / inputs.n_tokens.to(inputs.nll.dtype)
        below = (avg.detach() < ceiling).to(avg.dtype)
        per = base.per_sequence * below
        if kind_now == "pull":
            per = per + (1 - below) * (avg - ceiling)
        return LossTerm(per, "sequence", gradient_weight=base.gradient_weight * below)

    return term


def anchored_objective(margin: float, names: bool):
    """Per-token hinge against the companion pass (the record with another subject).
    ``names``: the subject's own tokens are held to the log-probability the swapped name's
    tokens get there (how well the model copies a name it never trained on); else they
    are left out."""

    def term(inputs, hparams):
        import torch.nn.functional as F

        other = inputs.companion
        width = min(inputs.logits.shape[1], other.logits.shape[1])
        labels, other_labels = inputs.labels[:, 1:width], other.labels[:, 1:width]
        index = labels.clamp_min(0).unsqueeze(-1)
        other_index = (other_labels if names else labels).clamp_min(0).unsqueeze(-1)
        own = F.log_softmax(inputs.logits[:, : width - 1].float(), -1).gather(-1, index)
        ref = F.log_softmax(other.logits[:, : width - 1].float(), -1).gather(-1, other_index)
        mask = (labels != -100) & (other_labels != -100)
        mask = (mask if names else mask & (labels == other_labels)).float()
        gap = F.relu((own - ref.detach()).squeeze(-1) - margin) * mask
        return LossTerm(gap.sum(1) / mask.sum(1).clamp_min(1), "sequence")

    return term


def frozen_reference(model, forget, swaps, names: bool):
    """Per forget example (keyed by its answer tokens), the original model's log-probability
    of each label under the swapped record, aligned with ``labels[1:]``: the reference
    cannot drift with training (a moving one fed back: pushing names down lowered it)."""
    import torch
    import torch.nn.functional as F

    table = {}
    with torch.no_grad():
        for example, swap in zip(forget, swaps):
            logits = model(input_ids=torch.tensor([swap.input_ids])).logits[0, :-1].float()
            own = torch.tensor(example.labels[1:])
            other = torch.tensor(swap.labels[1:])
            index = (other if names else own).clamp_min(0)
            ref = F.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
            mask = (own != -100) & (other != -100) & (names or (own == other))
            table[tuple(x for x in example.labels if x != -100)] = (ref, mask.float())
    return table


def frozen_objective(table, margin: float, two_sided: bool):
    def term(inputs, hparams):
        import torch
        import torch.nn.functional as F

        labels = inputs.labels[:, 1:]
        own = F.log_softmax(inputs.logits[:, :-1].float(), -1)
        own = own.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        ref = torch.zeros_like(own)
        mask = torch.zeros_like(own)
        for row in range(labels.shape[0]):
            key = tuple(x for x in inputs.labels[row].tolist() if x != -100)
            r, m = table[key]
            ref[row, : r.shape[0]], mask[row, : m.shape[0]] = r, m
        gap = own - ref - margin
        gap = (gap.abs() if two_sided else F.relu(gap)) * mask
        return LossTerm(gap.sum(1) / mask.sum(1).clamp_min(1), "sequence")

    return term


def subject_swaps(tokenizer, forget_records, forget, names, seed):
    """Each forget example with its subject replaced by a holdout author's name; the
    example itself where the swap changes the length (no token alignment then)."""
    draw = random.Random(seed)
    out, aligned = [], 0
    for example, record in zip(forget, forget_records):
        subject, other = record.meta["subject"], draw.choice(names)
        swapped = encode_qa(
            tokenizer,
            record.prompt.replace(subject, other),
            record.answer.replace(subject, other),
            max_length=MAX_LENGTH,
            template=DEFAULT_PROMPT_TEMPLATE,
        )
        if len(swapped.input_ids) == len(example.input_ids):
            aligned += 1
            out.append(replace(swapped, record_index=example.record_index))
        else:
            out.append(example)
    return out, aligned


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objective", choices=OBJECTIVES, default="pull")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=3.1e-4)
    parser.add_argument("--retain-coeff", type=float, default=5.0)
    parser.add_argument("--gamma", type=float, default=5.0)
    parser.add_argument("--sam-rho", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--margin", type=float, default=0.0, help="anchored: nats below")
    parser.add_argument(
        "--names", action="store_true", help="anchored: hold name tokens to the swap's too"
    )
    parser.add_argument(
        "--frozen", action="store_true", help="anchored: the original model is the reference"
    )
    parser.add_argument(
        "--two-sided", action="store_true", help="anchored, frozen: also pull tokens up to it"
    )
    parser.add_argument(
        "--augment", action="store_true", help="also forget a third wording of each answer"
    )
    parser.add_argument(
        "--value-nll",
        type=float,
        help="values: the value tokens' target NLL (default: their median on the holdout)",
    )
    parser.add_argument(
        "--pull-after",
        type=int,
        help="simnpo: switch to pull after this many epochs (forget far, then come back)",
    )
    parser.add_argument("--out", type=Path, help="JSON lines, one per epoch")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench")
    args = parser.parse_args(argv)

    study = load_study(args.cache)
    full, tokenizer, encode, probe = study.full, study.tokenizer, study.encode, study.probe
    forget, retain, original, oracle = study.forget, study.retain, study.original, study.oracle
    if args.augment:
        extra = augmented_examples(tokenizer, full.forget.records, len(forget))
        print(
            f"{len(extra)} augmented forget examples, e.g. {tokenizer.decode(extra[0].input_ids)}"
        )
        forget = list(forget) + extra
    oracle_tr = oracle.column("forget", "truth_ratio")
    ceiling = float(np.median(-original.column("holdout", "mia_loss")))
    original_holdout_tr = original.column("holdout", "truth_ratio")
    print(
        "oracle: holdout truth ratios vs the original's, KS p "
        f"{stats.ks_2samp(oracle.column('holdout', 'truth_ratio'), original_holdout_tr).pvalue:.3g}"
    )
    retain_p = original.column("retain", "probability").mean()

    method = get_method("simnpo")
    phase = {"kind": args.objective}
    if args.objective == "anchored":
        names = sorted({r.meta["subject"] for r in full.holdout.records})
        swaps, aligned = subject_swaps(tokenizer, full.forget.records, forget, names, args.seed)
        print(f"{aligned} of {len(forget)} forget examples aligned with their swap")
        if args.frozen:
            table = frozen_reference(study.load("target"), forget, swaps, args.names)
            method = replace(
                method, forget_term=frozen_objective(table, args.margin, args.two_sided)
            )
        else:
            method = replace(
                method,
                forget_term=anchored_objective(args.margin, args.names),
                companions=lambda *_: swaps,
            )
    elif args.objective == "values":
        if args.augment:
            parser.error("--augment applies to the sequence objectives")
        if args.value_nll is None:
            args.value_nll = unseen_value_nll(
                study.load("target"),
                tokenizer,
                full.holdout.records,
                encode(full.holdout),
            )
            print(f"value tokens' median NLL on the holdout (original model): {args.value_nll:.2f}")
        table = value_masks(tokenizer, full.forget.records, forget)
        covered = sum(1 for m in table.values() if m.sum() > 0)
        print(f"value tokens found in {covered} of {len(forget)} forget answers")
        method = replace(method, forget_term=value_objective(table, args.value_nll))
    else:
        method = replace(method, forget_term=sequence_objective(args.objective, ceiling, phase))
    hparams = method.parse_hyperparameters(
        {
            "learning_rate": args.learning_rate,
            "epochs": args.epochs,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            "max_length": MAX_LENGTH,
            "forget_coeff": 1.0,
            "retain_coeff": args.retain_coeff,
            "beta": 1.0,
            "gamma": args.gamma,
            "sam_rho": args.sam_rho,
        }
    )
    print(f"{args.objective}: ceiling (holdout median per-token NLL) {ceiling:.2f}", flush=True)
    started = time.monotonic()
    sink = args.out.open("a") if args.out else None

    def on_evaluation(point):
        measured = probe(point.model)
        forget_tr = measured.column("forget", "truth_ratio")
        row = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "cache")},
            "epoch": point.epoch,
            "oracle_fq": metrics.forget_quality(forget_tr, oracle_tr),
            "knowledge_p": float(
                stats.ks_2samp(forget_tr, measured.column("holdout", "truth_ratio")).pvalue
            ),
            # one-sided: only "still prefers the right answers" counts
            "knowledge_p_knows": float(
                stats.ks_2samp(
                    forget_tr, measured.column("holdout", "truth_ratio"), alternative="greater"
                ).pvalue
            ),
            # Anderson-Darling weighs the tails, where the oracle's truth ratios differ
            # (scipy caps its p-value to 0.001-0.25)
            "knowledge_ad_p": float(
                stats.anderson_ksamp([forget_tr, measured.column("holdout", "truth_ratio")]).pvalue
            ),
            # has the yardstick moved? the holdout's truth ratios against the original's
            "holdout_drift_p": float(
                stats.ks_2samp(
                    measured.column("holdout", "truth_ratio"), original_holdout_tr
                ).pvalue
            ),
            "membership_auc": metrics.roc_auc(
                measured.column("forget", "mia_loss"), measured.column("holdout", "mia_loss")
            ),
            "forget_nll_median": float(np.median(-measured.column("forget", "mia_loss"))),
            "retain_probability_ratio": float(
                measured.column("retain", "probability").mean() / retain_p
            ),
        }
        print(
            "epoch {epoch:4.0f}  oracle FQ {oracle_fq:8.3g}  knowledge p {knowledge_p:8.3g}  "
            "(knows {knowledge_p_knows:6.3g})  "
            "AD p {knowledge_ad_p:6.3g}  drift p {holdout_drift_p:8.3g}  AUC {membership_auc:.2f}  forget NLL {forget_nll_median:.2f}  "
            "retain P {retain_probability_ratio:.3f}".format(**row)
            + f"  ({time.monotonic() - started:.0f}s)",
            flush=True,
        )
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        if args.pull_after is not None and point.epoch >= args.pull_after:
            phase["kind"] = "pull"
        return False

    model = study.load("target")
    run_training(
        model,
        tokenizer,
        forget,
        retain,
        method,
        hparams,
        seed=args.seed,
        callbacks=Callbacks(on_evaluation=on_evaluation),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
