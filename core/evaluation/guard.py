"""Evaluating a guard on generations: a guard does not change the model's
probabilities, so likelihood metrics (truth ratio, forget quality, MIA) say nothing
about it. What it changes is what the model *says*; this measures that.

- forget ROUGE-L (recall against the forget answers) and KnowMem (ROUGE-L F1 of the
  answers to the forget questions, MUSE's QA measure) of greedy answers: unguarded,
  guarded, and the oracle's (a model never trained on the forget set) when given;
- retain ROUGE-L, guarded against unguarded (utility kept);
- the classifier's precision and recall on its held-out prompts (from the build) and
  its flag rate on paraphrased forget questions and on retain questions;
- a paraphrased-question attack: forget ROUGE-L of guarded answers to the paraphrases;
- the decoding overhead: seconds per generated token, guarded over unguarded.

Like every report, it holds numbers only, never forget-set text or generated answers
(the guard's own spans are, necessarily, in ``guard.json``).

The verdict: ``forgotten`` when the guarded forget ROUGE-L is at or below the
oracle's (without an oracle: at most half the unguarded one) and the paraphrase
attack recovers no more than that, with retain ROUGE-L at least 0.95x the unguarded
model's; ``not_forgotten`` otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from core.evaluation.metrics import rouge_l

RETAIN_FLOOR = 0.95
GUARD_REPORT_SCHEMA = "guard-1.0"
#: without an oracle: the guarded forget ROUGE-L at most this share of the unguarded one
NO_ORACLE_SHARE = 0.5


def _answers(model, tokenizer, prompts, guards, max_new_tokens) -> tuple[list, float, int]:
    """Greedy answers with ``guards`` (none: unguarded), the seconds they took (the
    guard's classification included) and the tokens generated."""
    from core.inference.generation import Sampling, decode
    from core.methods.guard import GuardProcessor

    answers, seconds, tokens = [], 0.0, 0
    lock = threading.Lock()
    for prompt_ids in prompts:
        start = time.perf_counter()
        processor = GuardProcessor.combine(guards, model, prompt_ids) if guards else None
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0)
        deltas = list(decode(model, tokenizer, prompt_ids, sampling, lock, processor))
        seconds += time.perf_counter() - start
        tokens += max(deltas[-1].completion_tokens, 1)
        answers.append("".join(delta.text for delta in deltas))
    return answers, seconds, tokens


def _paired(model, tokenizer, prompts, guards, max_new_tokens):
    """Unguarded and guarded answers, prompt by prompt in turn, so that both timings
    see the same machine load; ``(plain, guarded, seconds per token of each)``."""
    plain, guarded = [], []
    totals = {"plain": [0.0, 0], "guarded": [0.0, 0]}
    for prompt_ids in prompts:
        for key, answers, used in (("plain", plain, []), ("guarded", guarded, guards)):
            (answer,), seconds, tokens = _answers(
                model, tokenizer, [prompt_ids], used, max_new_tokens
            )
            answers.append(answer)
            totals[key][0] += seconds
            totals[key][1] += tokens
    return plain, guarded, totals


def _rouge(answers: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    scores = np.array([rouge_l(a, r) for a, r in zip(answers, references)])
    return (float(scores[:, 0].mean()), float(scores[:, 1].mean())) if len(scores) else (0.0, 0.0)


def evaluate_guard(
    model,
    tokenizer,
    guards: Sequence,
    forget: Sequence,
    retain: Sequence,
    *,
    encode,
    oracle=None,
    max_new_tokens: int = 32,
) -> dict:
    """``forget``/``retain``: records (``core.data.records.Record``); ``encode(tokenizer,
    question)`` renders a prompt's tokens; ``oracle``: ``(model, tokenizer)`` or None."""
    forget_prompts = [encode(tokenizer, r.prompt) for r in forget]
    retain_prompts = [encode(tokenizer, r.prompt) for r in retain]
    paraphrased = [r for r in forget if r.paraphrased_question]
    paraphrase_prompts = [encode(tokenizer, r.paraphrased_question) for r in paraphrased]
    forget_answers = [r.answer for r in forget]

    _answers(model, tokenizer, forget_prompts[:1], guards, 2)  # warm-up, not timed
    plain_forget, guarded_forget, forget_time = _paired(
        model, tokenizer, forget_prompts, guards, max_new_tokens
    )
    plain_retain, guarded_retain, retain_time = _paired(
        model, tokenizer, retain_prompts, guards, max_new_tokens
    )
    attacked, _, _ = _answers(model, tokenizer, paraphrase_prompts, guards, max_new_tokens)
    plain_s, plain_n = (forget_time["plain"][i] + retain_time["plain"][i] for i in (0, 1))
    guarded_s, guarded_n = (forget_time["guarded"][i] + retain_time["guarded"][i] for i in (0, 1))

    result = {
        "forget_rouge_l": {
            "unguarded": _rouge(plain_forget, forget_answers)[0],
            "guarded": _rouge(guarded_forget, forget_answers)[0],
        },
        "forget_knowmem": {
            "unguarded": _rouge(plain_forget, forget_answers)[1],
            "guarded": _rouge(guarded_forget, forget_answers)[1],
        },
        "retain_rouge_l": {
            "unguarded": _rouge(plain_retain, [r.answer for r in retain])[0],
            "guarded": _rouge(guarded_retain, [r.answer for r in retain])[0],
            "guarded_vs_unguarded": _rouge(guarded_retain, plain_retain)[0],
        },
        "paraphrase_attack_rouge_l": (
            _rouge(attacked, [r.answer for r in paraphrased])[0] if paraphrased else None
        ),
        "classifier": {
            "holdout": [guard.info.get("holdout") for guard in guards],
            "paraphrased_forget_flag_rate": _flag_rate(guards, model, paraphrase_prompts),
            "retain_flag_rate": _flag_rate(guards, model, retain_prompts),
        },
        "seconds_per_token": {
            "unguarded": plain_s / plain_n,
            "guarded": guarded_s / guarded_n,
            "overhead": (guarded_s / guarded_n) / (plain_s / plain_n),
        },
    }
    if oracle is not None:
        oracle_model, oracle_tokenizer = oracle
        oracle_prompts = [encode(oracle_tokenizer, r.prompt) for r in forget]
        answers, _, _ = _answers(oracle_model, oracle_tokenizer, oracle_prompts, [], max_new_tokens)
        result["forget_rouge_l"]["oracle"], result["forget_knowmem"]["oracle"] = _rouge(
            answers, forget_answers
        )
    result["verdict"] = guard_verdict(result)
    return result


def _flag_rate(guards, model, prompts) -> float | None:
    if not prompts:
        return None
    return sum(any(g.flags(model, ids) for g in guards) for ids in prompts) / len(prompts)


def guard_verdict(result: dict) -> dict:
    forget = result["forget_rouge_l"]
    oracle = forget.get("oracle")
    ceiling = oracle if oracle is not None else NO_ORACLE_SHARE * forget["unguarded"]
    retain = result["retain_rouge_l"]
    attack = result["paraphrase_attack_rouge_l"]
    checks = [
        _check(
            "forget_rouge_l",
            "guarded forget ROUGE-L at or below "
            + ("the oracle's" if oracle is not None else "half the unguarded model's"),
            forget["guarded"],
            ceiling,
            forget["guarded"] <= ceiling + 1e-9,
            "ROUGE-L recall of the guarded model's greedy answers to the forget questions",
        ),
        _check(
            "paraphrase_attack",
            "paraphrased questions recover no more",
            attack,
            ceiling,
            None if attack is None else attack <= ceiling + 1e-9,
            "the same, asking the forget set's paraphrased questions",
        ),
        _check(
            "retain_rouge_l",
            f"retain ROUGE-L at least {RETAIN_FLOOR}x the unguarded model's",
            retain["guarded"],
            RETAIN_FLOOR * retain["unguarded"],
            retain["guarded"] >= RETAIN_FLOOR * retain["unguarded"] - 1e-9,
            "ROUGE-L recall of the guarded model's answers to retain questions",
        ),
    ]
    failed = [check["label"] for check in checks if check["passed"] is False]
    return {
        "status": "not_forgotten" if failed else "forgotten",
        "forgotten": not failed,
        "reason": "failed: " + "; ".join(failed) if failed else "every check passed",
        "checks": checks,
    }


def _check(name, label, value, threshold, passed, description) -> dict:
    """One check, in the shape of the training verdict's (core.evaluation.verdict)."""
    return {
        "name": name,
        "label": label,
        "value": value,
        "threshold": threshold,
        "passed": passed,
        "description": description,
    }


def write_guard_report(evaluation: dict, guard_info: dict, folder, *, job_id: str | None = None):
    """``report.json`` and ``report.html`` for a guard job, in the place and shape of
    other jobs' reports: ``summary`` with the verdict, then the evaluation."""
    import json
    from datetime import datetime, timezone
    from pathlib import Path

    from core.evaluation.report_html import environment

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    forget = evaluation["forget_rouge_l"]
    report = {
        "schema_version": GUARD_REPORT_SCHEMA,
        "kind": "guard",
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "summary": {
            "verdict": evaluation["verdict"],
            "forget_rouge": forget["guarded"],
            "forget_rouge_unguarded": forget["unguarded"],
            "forget_rouge_oracle": forget.get("oracle"),
            "retain_rouge": evaluation["retain_rouge_l"]["guarded"],
            "latency_ratio": evaluation["seconds_per_token"]["overhead"],
        },
        "guard": {"base_model": guard_info["base_model"], "spans": len(guard_info["spans"])},
        "evaluation": evaluation,
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    html = environment().get_template("guard_report.html").render(report=report, job_id=job_id)
    (folder / "report.html").write_text(html)
    return report
