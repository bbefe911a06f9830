"""A forget objective on the truth ratio itself, in the phrasing the model trained on.

    python bench/truth_ratio_objective.py --preset demo --epochs 10
    python bench/truth_ratio_objective.py --preset bench --epochs 20 --out tr.jsonl

What the job's forget terms (SimNPO, its facts-only and matched variants) leave
(``bench/value_groups.py``, docs/minitofu.md, stop 38): they push the right answer's
likelihood down, and the wrong values' in the same slot go down with it, so the model
keeps *preferring* the right value, in the very sentence it trained on (truth ratio
median 0.81 after 180 facts-only steps on the demo, oracle 0.99) and in the paraphrase
the benchmark scores. This objective acts on the preference instead. Per forget record
it builds wrong answers from the retain answers of the same template (the record's
answer with its value swapped for another retained author's value in the same slot: no
paraphrases or perturbed answers of the benchmark are used), and trains

    hinge( ceiling_i - log TR_i ),  log TR_i = avgNLL(right_i) - mean_k avgNLL(wrong_ik),

where ``ceiling_i`` is the holdout records' log truth ratio (measured the same way, on
the original model) of the same rank as record i's current one: forget preferences are
moved to unseen authors' distribution, not past it. A retain NLL term (weight 1) goes
beside it. Each epoch prints the oracle's forget quality (the benchmark's paraphrased
truth ratios), the verdict's knowledge p-value and membership AUC (forget vs holdout)
and the model utility against the original's.

``--objective rmu`` runs RMU instead (Li et al., WMDP, arXiv 2403.03218): the forget
tokens' activations at one layer steered to a fixed random vector, the retain tokens'
held at the original's (``--matched``: only records whose answer is still likelier than
the holdout answer of the same rank; ``--subject-only``: the subject's tokens only).

Found on the demo (docs/minitofu.md, stop 38): the truth-ratio objective matches the
trained sentence but the paraphrase barely moves (oracle forget quality <= 0.0023); RMU
moves the paraphrase (median truth ratio 0.95-0.99) but bunches the ratios at 1 and,
unmatched, pushes the answers far below unseen data (forget quality <= 0.19, then 0.01);
matched, it holds membership in the band at forget quality 0.036. Matched on the trained
phrasing's truth ratio instead (``--match-on truth_ratio``, stop 40), it over-forgets
the answers (AUC 0.19) while a quarter of the records stay below their ceiling.

Scratch research, not a method: the subject of each record (the ``subject`` field of
the demo data) places the swap; a method would need the template found without it.
About 1.5-6 min a run on the demo preset (2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from study_setup import MAX_LENGTH, load_study  # noqa: E402
from value_groups import value_span  # noqa: E402

from core.data.encoding import collate, encode_qa_many  # noqa: E402
from core.evaluation import metrics  # noqa: E402
from core.evaluation.scoring import pad_token_id  # noqa: E402
from core.evaluation.verdict import knowledge_check  # noqa: E402
from core.models.scoring import sequence_nll  # noqa: E402
from core.spec import DEFAULT_PROMPT_TEMPLATE  # noqa: E402

WRONG_PER_RECORD = 5
#: a swapped value longer than this many words is not one slot of the same template
MAX_VALUE_WORDS = 4


def _template(record) -> str:
    return record.answer.replace(record.meta["subject"], "{S}")


def wrong_answers(record, retained, k: int, rng: random.Random) -> list[str]:
    """``record``'s answer with its value replaced by up to ``k`` other values that retained
    records hold in the same slot of the same answer template. The slot is the span that
    most retained answers differ in ("Vreves" in "... born in the city of Vreves.", not
    "the city of Vreves" against "... born in 1964.")."""
    mine = _template(record)
    swaps: dict[str, set[str]] = {}
    for other in retained:
        theirs = _template(other)
        value, replacement = value_span(mine, theirs)
        if (
            value
            and replacement
            and len(replacement.split()) <= MAX_VALUE_WORDS
            and mine.replace(value, replacement, 1) == theirs
        ):
            swaps.setdefault(value, set()).add(replacement)
    if not swaps:
        return []
    value = max(swaps, key=lambda v: (len(swaps[v]), -len(v)))
    chosen = sorted(swaps[value])
    rng.shuffle(chosen)
    return [record.answer.replace(value, r, 1) for r in chosen[:k]]


def _avg_nll(model, tokenizer, pairs):
    """Per ``(question, answer)``: the answer's mean per-token NLL, with gradients."""
    examples = encode_qa_many(
        tokenizer,
        [(q, a, i) for i, (q, a) in enumerate(pairs)],
        max_length=MAX_LENGTH,
        template=DEFAULT_PROMPT_TEMPLATE,
    )
    batch = collate(examples, pad_token_id(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, n_tokens = sequence_nll(logits, batch["labels"])
    return nll / n_tokens


def log_truth_ratios(model, tokenizer, groups):
    """Per group ``(question, right, [wrong...])``: avgNLL(right) - mean avgNLL(wrong)."""
    import torch

    pairs, starts = [], []
    for question, right, wrong in groups:
        starts.append(len(pairs))
        pairs += [(question, right)] + [(question, w) for w in wrong]
    nll = _avg_nll(model, tokenizer, pairs)
    return torch.stack(
        [nll[s] - nll[s + 1 : s + 1 + len(g[2])].mean() for s, g in zip(starts, groups)]
    )


def matched_ceilings(current: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per forget record, the reference value of the same rank (as a quantile)."""
    ranks = np.argsort(np.argsort(current))
    return np.quantile(reference, (ranks + 0.5) / len(current))


def _hidden(model, examples, layer: int):
    """Layer ``layer``'s output at every real token of ``examples``, and the mask."""
    # right padding: no real token attends to a pad, whatever its id
    batch = collate(examples, 0)
    states = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
    ).hidden_states
    return states[layer], batch["attention_mask"].bool()


def subject_masks(tokenizer, records, examples):
    """Per forget example, which of its tokens spell its record's subject (each time)."""
    import torch

    masks = []
    for record, example in zip(records, examples):
        ids = example.input_ids
        masks.append(torch.zeros(len(ids), dtype=torch.bool))
        for spelling in (record.meta["subject"], " " + record.meta["subject"]):
            name = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            for i in range(len(ids) - len(name) + 1):
                if ids[i : i + len(name)] == name:
                    masks[-1][i : i + len(name)] = True
    return masks


def rmu_step(model, frozen, forget, retain, control, layer, alpha, only=None):
    """RMU (Li et al., WMDP, arXiv 2403.03218): forget tokens' activations at ``layer``
    pushed to a fixed random direction (``control``: that direction times the scale),
    retain tokens' held at the frozen original's."""
    import torch

    states, mask = _hidden(model, forget, layer)
    if only is not None:  # the subject's tokens only
        mask = mask & torch.nn.utils.rnn.pad_sequence(only, batch_first=True)[:, : mask.shape[1]]
    forget_loss = ((states - control) ** 2).sum(-1)[mask].mean()
    states, mask = _hidden(model, retain, layer)
    with torch.no_grad():
        reference, _ = _hidden(frozen, retain, layer)
    retain_loss = ((states - reference) ** 2).sum(-1)[mask].mean()
    return forget_loss + alpha * retain_loss


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--build", type=int, default=0, help="asset build seed")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=3.1e-4)
    parser.add_argument("--retain-coeff", type=float, default=1.0)
    parser.add_argument(
        "--objective",
        choices=("truth_ratio", "rmu"),
        default="truth_ratio",
        help="rmu: representation misdirection instead (the subject's facts scrambled "
        "where they are retrieved, in any phrasing)",
    )
    parser.add_argument("--layer", type=int, default=2, help="rmu: the hidden state steered")
    parser.add_argument(
        "--scale", type=float, default=3.0, help="rmu: the control vector's norm over the mean"
    )
    parser.add_argument("--alpha", type=float, default=10.0, help="rmu: the retain weight")
    parser.add_argument(
        "--matched",
        action="store_true",
        help="rmu: steer only the forget records whose answer is still likelier than the "
        "holdout answer of the same rank (match_holdout's rule; ranks taken each epoch)",
    )
    parser.add_argument(
        "--match-on",
        choices=("likelihood", "truth_ratio", "either"),
        default="likelihood",
        help="rmu --matched: what a record is matched on. truth_ratio: steered while its "
        "trained-phrasing truth ratio (the wrong answers built here) is below the holdout "
        "record's of the same rank; either: while its likelihood or its truth ratio has not "
        "reached unseen data's",
    )
    parser.add_argument(
        "--subject-only",
        action="store_true",
        help="rmu: steer the subject's tokens only (where an entity's facts are looked up)",
    )
    parser.add_argument("--out", type=Path, help="JSON lines, one per epoch")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "bench")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    study = load_study(args.cache, args.preset, args.build)
    tokenizer, full = study.tokenizer, study.full
    retained = full.retain.records

    def groups(records):
        return [
            (r.prompt, r.answer, wrong_answers(r, retained, WRONG_PER_RECORD, rng)) for r in records
        ]

    all_groups = groups(full.forget.records)
    group_of = {}
    for i, g in enumerate(all_groups):
        if g[2]:
            group_of[i] = len(group_of)
    forget = [g for g in all_groups if g[2]]
    holdout = [g for g in groups(full.holdout.records) if g[2]]
    print(
        f"wrong answers built for {len(forget)} of {len(full.forget.records)} forget records "
        f"and {len(holdout)} holdout records",
        flush=True,
    )
    model = study.load("target")
    with torch.no_grad():
        model.eval()
        reference = log_truth_ratios(model, tokenizer, holdout).numpy()
    retain_pairs = [(r.prompt, r.answer) for r in retained]
    oracle_tr = study.oracle.column("forget", "truth_ratio")
    original_utility = study.original.utility()
    if args.objective == "rmu":
        frozen = study.load("target").eval()
        with torch.no_grad():
            states, mask = _hidden(frozen, study.forget, args.layer)
            norm = states.norm(dim=-1)[mask].mean()
        direction = torch.rand(states.shape[-1])
        control = args.scale * norm * direction / direction.norm()
        # the layers up to the steered one learn; the rest of the model stays the original's
        for name, parameter in model.named_parameters():
            parameter.requires_grad = any(f"layers.{i}." in name for i in range(args.layer))
        subjects = (
            subject_masks(tokenizer, full.forget.records, study.forget)
            if args.subject_only
            else None
        )
        print(f"rmu: layer {args.layer}, control norm {float(control.norm()):.2f}", flush=True)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.learning_rate,
        weight_decay=0.01,
    )
    sink = args.out.open("a") if args.out else None
    started = time.monotonic()
    order = list(range(len(study.forget if args.objective == "rmu" else forget)))
    forget_answers = [(r.prompt, r.answer) for r in full.forget.records]
    holdout_answers = [(r.prompt, r.answer) for r in full.holdout.records]
    for epoch in range(1, args.epochs + 1):
        with torch.no_grad():
            model.eval()
            current = log_truth_ratios(model, tokenizer, forget).numpy()
        ceilings = torch.tensor(matched_ceilings(current, reference), dtype=torch.float32)
        if args.objective == "rmu" and args.matched:
            with torch.no_grad():
                answer_nll = _avg_nll(model, tokenizer, forget_answers).numpy()
                holdout_nll = _avg_nll(model, tokenizer, holdout_answers).numpy()
            nll_ceilings = torch.tensor(matched_ceilings(answer_nll, holdout_nll))
        model.train()
        steered = 0
        rng.shuffle(order)
        for start in range(0, len(order), 8):
            batch = order[start : start + 8]
            if args.objective == "rmu":
                if args.matched:
                    with torch.no_grad():
                        nll = _avg_nll(model, tokenizer, [forget_answers[i] for i in batch])
                        known = {i for i, n in zip(batch, nll) if n < nll_ceilings[i]}
                        grouped = [i for i in batch if i in group_of]
                        preferred = set()
                        if grouped and args.match_on != "likelihood":
                            tr = log_truth_ratios(
                                model, tokenizer, [forget[group_of[i]] for i in grouped]
                            )
                            preferred = {
                                i for i, t in zip(grouped, tr) if t < ceilings[group_of[i]]
                            }
                    chosen = {
                        "likelihood": known,
                        "truth_ratio": preferred,
                        "either": known | preferred,
                    }[args.match_on]
                    steered += len(chosen)
                    batch = [i for i in batch if i in chosen]
                    if not batch:
                        continue
                loss = rmu_step(
                    model,
                    frozen,
                    [study.forget[i] for i in batch],
                    rng.sample(study.retain, 8),
                    control,
                    args.layer,
                    args.alpha,
                    [subjects[i] for i in batch] if subjects else None,
                )
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                continue
            log_tr = log_truth_ratios(model, tokenizer, [forget[i] for i in batch])
            loss = torch.relu(ceilings[batch] - log_tr).mean()
            loss = (
                loss
                + args.retain_coeff * _avg_nll(model, tokenizer, rng.sample(retain_pairs, 8)).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        model.eval()
        measured = study.probe(model)
        forget_tr = measured.column("forget", "truth_ratio")
        holdout_tr = measured.column("holdout", "truth_ratio")
        row = {
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "cache")},
            "epoch": epoch,
            "oracle_fq": float(metrics.forget_quality(forget_tr, oracle_tr)),
            "knowledge_p": knowledge_check(forget_tr, holdout_tr, 0.2).value,
            "membership_auc": metrics.roc_auc(
                measured.column("forget", "mia_loss"), measured.column("holdout", "mia_loss")
            ),
            "utility_ratio": measured.utility() / original_utility,
            "forget_tr_median": float(np.median(forget_tr)),
            "trained_phrasing_log_tr_median": float(np.median(current)),
            "steered": steered if args.objective == "rmu" and args.matched else None,
        }
        print(
            "epoch {epoch:3d}  oracle FQ {oracle_fq:8.3g}  knowledge p {knowledge_p:8.3g}  "
            "AUC {membership_auc:.2f}  utility {utility_ratio:.3f}x  forget TR median "
            "{forget_tr_median:.2f}  steered {steered}".format(**row)
            + f"  ({time.monotonic() - started:.0f}s)",
            flush=True,
        )
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
