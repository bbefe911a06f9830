"""Relearning attack: does forgotten knowledge come back after a little fine-tuning?

Fine-tune a copy of the unlearned model for a few steps on part of the forget set, then
measure the forget metrics again, on the part it relearned and on the part it did not
see. Knowledge that returns on the *unseen* part was hidden, not removed (the
robustness concern raised about NPO-style unlearning).
"""

from __future__ import annotations

import copy
import math
import random

from core.data.encoding import encode_record_set
from core.data.records import RecordSet
from core.evaluation.evaluate import EvaluationSets, evaluate_model
from core.spec import EvaluationSpec

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
) -> tuple[float, float]:
    """The relearning check of the verdict, on the model being trained, in place: a few
    AdamW steps of answer NLL on ``fraction`` of the forget examples, then the mean
    length-normalized probability of the other forget examples and of the holdout
    records; the trainable weights are restored afterwards.

    A plain loop (not the shared one): it runs inside an evaluation point of a training
    run, whose accelerator state it must not touch. The model stays in eval mode (no
    dropout), so the run's random generators are not drawn from either.
    """
    import torch

    from core.data.encoding import collate
    from core.evaluation.scoring import pad_token_id, score_sequences
    from core.models.scoring import sequence_nll
    from core.training.state import load_trainable_weights, trainable_weights

    order = list(range(len(forget_examples)))
    random.Random(seed).shuffle(order)
    cut = min(len(order) - 1, max(1, round(len(order) * fraction)))
    seen = [forget_examples[i] for i in order[:cut]]
    unseen = [forget_examples[i] for i in order[cut:]]
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
            start = (step * batch_size) % len(seen)
            batch_examples = (seen + seen)[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate(batch_examples, pad).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            nll, n_tokens = sequence_nll(logits, batch["labels"])
            (nll.sum() / n_tokens.sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        scored = score_sequences(model, unseen, pad_token_id=pad, batch_size=64)
        unseen_probability = float(
            sum(math.exp(-s.nll / max(s.n_tokens, 1)) for s in scored) / max(len(scored), 1)
        )
        holdout_examples = encode_record_set(
            tokenizer, holdout, max_length=max_length, template=template
        )
        scored = score_sequences(model, holdout_examples, pad_token_id=pad, batch_size=64)
        holdout_probability = float(
            sum(math.exp(-s.nll / max(s.n_tokens, 1)) for s in scored) / max(len(scored), 1)
        )
    finally:
        for param in params:
            param.grad = None
        load_trainable_weights(model, saved)
        for param in unfrozen:
            param.requires_grad_(False)
        model.train(was_training)
    return unseen_probability, holdout_probability
