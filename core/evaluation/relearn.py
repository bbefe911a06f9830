"""Relearning attack: does forgotten knowledge come back after a little fine-tuning?

Fine-tune a copy of the unlearned model for a few steps on part of the forget set, then
measure the forget metrics again, on the part it relearned and on the part it did not
see. Knowledge that returns on the *unseen* part was hidden, not removed (the
robustness concern raised about NPO-style unlearning).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

from core.data.encoding import encode_record_set
from core.data.records import RecordSet
from core.evaluation import metrics
from core.evaluation.evaluate import EvaluationSets, evaluate_model
from core.spec import EvaluationSpec

#: disjoint holdout groups the reference attack is repeated on, where the holdout has
#: room (each costs one more attack of ``steps`` steps)
REFERENCE_GROUPS = 3
REPORTED = ("forget_probability", "forget_truth_ratio", "forget_rouge", "extraction_strength")


def _subset(records: RecordSet, indices: list[int], suffix: str) -> RecordSet:
    return RecordSet(
        name=f"{records.name} ({suffix})",
        format=records.format,
        kind=records.kind,
        records=[records.records[i] for i in indices],
        sha256=records.sha256,
        size_bytes=records.size_bytes,
        columns=records.columns,
    )


def relearn_attack(
    model,
    tokenizer,
    forget: RecordSet,
    spec: EvaluationSpec,
    *,
    template: str,
    max_length: int,
    seed: int = 0,
    before: dict | None = None,
) -> dict:
    """Attack a copy of ``model``; ``before`` holds the unlearned model's forget metrics
    on the whole forget set. Each part (relearned, unseen) is also measured before the
    attack, so that every before/after pair compares the same samples."""
    from core.training.finetune import FinetuneHyperparameters, finetune

    attack = spec.relearn
    order = list(range(len(forget)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(order) * attack.fraction))
    seen, unseen = sorted(order[:cut]), sorted(order[cut:])
    train_set = _subset(forget, seen, "relearned")
    examples = encode_record_set(tokenizer, train_set, max_length=max_length, template=template)

    measure = spec.model_copy(update={"relearn": None})
    parts = {"relearned": train_set}
    if unseen:
        parts["unseen"] = _subset(forget, unseen, "not relearned")

    def forget_metrics(net) -> dict[str, dict]:
        measured = {}
        for part, records in parts.items():
            result = evaluate_model(
                net,
                tokenizer,
                EvaluationSets(forget=records),
                measure,
                template=template,
                max_length=max_length,
            )
            measured[part] = {key: result.metrics.get(key) for key in REPORTED}
        return measured

    before_parts = forget_metrics(model)
    attacked = copy.deepcopy(model)
    hparams = FinetuneHyperparameters(
        learning_rate=attack.learning_rate,
        epochs=1000,
        max_steps=attack.steps,
        batch_size=attack.batch_size,
        gradient_accumulation_steps=1,
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_length=max_length,
        precision="fp32",
        lr_scheduler="constant",
    )
    finetune(attacked, tokenizer, examples, hparams, seed=seed)

    after = forget_metrics(attacked)
    del attacked
    return {
        "steps": attack.steps,
        "fraction": attack.fraction,
        "learning_rate": attack.learning_rate,
        "relearned_samples": len(seen),
        "unseen_samples": len(unseen),
        "before_attack": {key: (before or {}).get(key) for key in REPORTED},
        "before_attack_relearned": before_parts["relearned"],
        "after_attack": after["relearned"],
        "before_attack_unseen": before_parts.get("unseen"),
        "after_attack_unseen": after.get("unseen"),
    }


@dataclass(frozen=True)
class RelearnProbabilities:
    """What the verdict's relearning check measures (mean length-normalized answer
    probabilities, each after a short fine-tune on half a set)."""

    #: the forget records the attack on the forget set did not train on
    unseen: float
    #: the holdout records after that attack (the check's reference before 2026-12-05)
    holdout: float
    #: the holdout records not trained on after the *same* attack on the holdout's other
    #: half: what a model that never saw the forget set would show for it (None when the
    #: holdout has fewer than two records)
    reference: float | None


def relearn_probability(
    model,
    tokenizer,
    forget_examples,
    holdout: RecordSet,
    *,
    template: str,
    max_length: int,
    steps: int,
    fraction: float,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
) -> RelearnProbabilities:
    """The relearning check of the verdict, on the model being trained, in place.

    Attacks of a few AdamW steps of answer NLL, each from the same weights (restored
    after each): one on ``fraction`` of the forget examples, then the other forget
    examples and the holdout records are scored; then one to ``REFERENCE_GROUPS`` on the
    same fraction of holdout records, then the other records of that group are scored. The second is the reference: the
    holdout is what the forget set would be to a model that never saw it, so its unseen
    half rises by exactly the transfer between questions about the same subject that the
    model shows for data it never learned (1.2x on the Llama benchmark, 3x on the GPT-2
    one, whose BPE name pieces are shared: a fixed limit cannot fit both). Each holdout
    attack takes as many records as the forget attack, whole subjects at a time where
    records name one (``subject``), so that both see each record as often and about as
    many records per subject; a holdout with room for more gives up to
    ``REFERENCE_GROUPS`` disjoint groups, each attacked from the same weights, and the
    reference is their mean.

    A plain loop (not the shared one): it runs inside an evaluation point of a training
    run, whose accelerator state it must not touch. The model stays in eval mode (no
    dropout), so the run's random generators are not drawn from either.
    """
    holdout_examples = encode_record_set(
        tokenizer, holdout, max_length=max_length, template=template
    )
    attacked, unseen = _halves(forget_examples, fraction, seed)
    unseen_p, holdout_p = _attacked_probabilities(
        model,
        tokenizer,
        attacked,
        [unseen, holdout_examples],
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    references = []
    for group in _reference_groups(holdout, len(forget_examples), seed):
        if len(group) < 2:
            break
        attacked, unseen = _halves([holdout_examples[i] for i in group], fraction, seed)
        references += _attacked_probabilities(
            model,
            tokenizer,
            attacked,
            [unseen],
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
        )
    reference = sum(references) / len(references) if references else None
    return RelearnProbabilities(unseen=unseen_p, holdout=holdout_p, reference=reference)


def _reference_groups(holdout: RecordSet, n: int, seed: int) -> list[list[int]]:
    """Disjoint groups of ``n`` holdout records (one group of all, if it has no more),
    at most ``REFERENCE_GROUPS``, for the reference attacks: whole subjects in a seeded
    order where the records name one, else a random sample. The attack runs a fixed
    number of steps, so a group larger than the forget set would see each record less
    often (the tiny demo: 16 forget records, 32 holdout ones, and a retrained model's
    unseen forget half came back 2x its holdout's); and which subjects a group holds
    moves the reference (0.92-1.33x on one GPT-2 oracle), so more groups are averaged."""
    if len(holdout) <= n:
        return [list(range(len(holdout)))]
    rng = random.Random(seed)
    subjects: dict[object, list[int]] = {}
    for i, record in enumerate(holdout.records):
        subjects.setdefault(record.meta.get("subject", i), []).append(i)
    groups = list(subjects.values())
    rng.shuffle(groups)
    order = [i for group in groups for i in group]
    count = min(REFERENCE_GROUPS, len(order) // n)
    return [sorted(order[k * n : (k + 1) * n]) for k in range(count)]


def _halves(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """``fraction`` of ``examples`` to attack and the rest, by the seed (both non-empty)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = min(len(order) - 1, max(1, round(len(order) * fraction)))
    return [examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]


def _attacked_probabilities(
    model,
    tokenizer,
    attacked: list,
    measured: list[list],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
) -> list[float]:
    """Fine-tune ``model`` in place on ``attacked``, score each list of ``measured``
    (mean length-normalized probability), and restore the trainable weights."""
    import torch

    from core.data.encoding import collate
    from core.evaluation.scoring import pad_token_id, score_sequences
    from core.models.scoring import sequence_nll
    from core.training.state import load_trainable_weights, trainable_weights

    pad = pad_token_id(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    # A LoRA model merged for publishing has no trainable weights left: the attacker
    # fine-tunes all of them (and they are restored after, like any other).
    unfrozen = [] if params else list(model.parameters())
    for param in unfrozen:
        param.requires_grad_(True)
    params = params or unfrozen
    saved = trainable_weights(model)
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        for step in range(steps):
            start = (step * batch_size) % len(attacked)
            batch_examples = (attacked + attacked)[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(batch_examples, pad).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            nll, n_tokens = sequence_nll(logits, batch["labels"])
            (nll.sum() / n_tokens.sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        probabilities = []
        for examples in measured:
            scored = score_sequences(model, examples, pad_token_id=pad, batch_size=64)
            # the metrics' own length-normalized probability (an answer has >= 1 token)
            each = metrics.normalized_probability(
                [x.nll for x in scored], [max(x.n_tokens, 1) for x in scored]
            )
            probabilities.append(float(each.mean()) if len(scored) else 0.0)
    finally:
        for param in params:
            param.grad = None
        load_trainable_weights(model, saved)
        for param in unfrozen:
            param.requires_grad_(False)
        model.train(was_training)
    return probabilities


def relearning_check_of(probabilities: RelearnProbabilities):
    """The verdict's relearning check (``core.evaluation.verdict.relearning_check``) of
    these measurements: against the holdout's own relearning where it was measured."""
    from core.evaluation.verdict import relearning_check

    if probabilities.reference is None:
        return relearning_check(probabilities.unseen, probabilities.holdout, calibrated=False)
    return relearning_check(probabilities.unseen, probabilities.reference)
