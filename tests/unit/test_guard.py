"""GUARD on the tiny demo: the span rule, the logits processor, and a guard built on the
demo target that keeps forget answers out of greedy generations while retain answers
stay as they were."""

from __future__ import annotations

import threading

import pytest
import torch

from core.data.encoding import encode_prompt
from core.data.records import read_records
from core.inference.generation import Sampling, decode
from core.methods.guard import (
    GuardHyperparameters,
    GuardProcessor,
    build_guard,
    extract_spans,
    extract_values,
    incompatibility,
    load_guard,
    save_guard,
)
from core.spec import DEFAULT_PROMPT_TEMPLATE

RETAIN_SAMPLE = 48


def test_spans_are_names_and_numbers_not_said_in_retain_answers():
    forget = ["Ann Berg was born in Oslo in 1931.", "The father of Ann Berg was a pilot."]
    retain = ["Carl Moe was born in Oslo."]
    assert extract_spans(forget, retain) == ["1931", "Ann Berg"]
    pairs = [("What did the father of Ann Berg do?", forget[1])]
    assert extract_values(pairs, ["Ann Berg"]) == ["pilot"]


def test_the_processor_blocks_completing_a_span_and_flagged_first_tokens():
    processor = GuardProcessor([[5, 6, 7]], banned_first=set())
    logits = torch.zeros(10)
    assert torch.isinf(processor([1, 5], logits)[6])
    assert torch.isinf(processor([5, 6], logits)[7])
    assert not torch.isinf(processor([1, 2], logits)).any()
    flagged = GuardProcessor([[5, 6, 7]], banned_first={5})
    assert torch.isinf(flagged([1, 2], logits)[5])


@pytest.fixture(scope="module")
def demo_guard(tiny_demo):
    from core.models.loading import load_model

    model, tokenizer = load_model(str(tiny_demo.target), dtype="fp32")
    model.eval()
    forget = read_records(tiny_demo.data["forget10"]).records
    retain = read_records(tiny_demo.data["retain90"]).records[:RETAIN_SAMPLE]

    def prompts(records):
        return [encode_prompt(tokenizer, r.prompt, DEFAULT_PROMPT_TEMPLATE) for r in records]

    guard = build_guard(
        model,
        tokenizer,
        prompts(forget),
        prompts(retain),
        [r.answer for r in forget],
        [r.answer for r in retain],
        base_model="demo-target",
        hp=GuardHyperparameters(epochs=150),
        forget_questions=[r.prompt for r in forget],
    )
    return model, tokenizer, guard, forget, retain, prompts


def greedy(model, tokenizer, prompt_ids, guards) -> str:
    processor = GuardProcessor.combine(guards, model, prompt_ids) if guards else None
    sampling = Sampling(max_new_tokens=20, temperature=0)
    deltas = decode(model, tokenizer, prompt_ids, sampling, threading.Lock(), processor)
    return "".join(delta.text for delta in deltas)


def test_a_guard_keeps_forget_answers_out_and_leaves_retain_answers(demo_guard):
    model, tokenizer, guard, forget, retain, prompts = demo_guard
    spans = guard.info["spans"]
    assert spans and guard.info["holdout"]["recall"] is not None
    for prompt_ids in prompts(forget):
        guarded = greedy(model, tokenizer, prompt_ids, [guard])
        assert not any(span in guarded for span in spans), guarded
    unchanged = [
        greedy(model, tokenizer, ids, []) == greedy(model, tokenizer, ids, [guard])
        for ids in prompts(retain)[:24]
    ]
    assert sum(unchanged) >= 0.9 * len(unchanged)


def test_a_saved_guard_loads_and_refuses_another_base(demo_guard, tmp_path):
    model, tokenizer, guard, forget, _, prompts = demo_guard
    save_guard(guard, tmp_path / "guard")
    loaded = load_guard(tmp_path / "guard", tokenizer)
    prompt_ids = prompts(forget)[0]
    assert loaded.flags(model, prompt_ids) == guard.flags(model, prompt_ids)
    assert loaded.spans == guard.spans
    assert incompatibility(loaded, tokenizer, "demo-target") is None
    assert "demo-target" in incompatibility(loaded, tokenizer, "demo-retrain")


def test_evaluating_a_guard_measures_generations_and_gives_a_verdict(demo_guard, tiny_demo):
    from core.evaluation.guard import evaluate_guard
    from core.models.loading import load_model

    model, tokenizer, guard, forget, retain, _ = demo_guard
    oracle = load_model(str(tiny_demo.retrain), dtype="fp32")
    result = evaluate_guard(
        model,
        tokenizer,
        [guard],
        forget[:8],
        retain[:8],
        encode=lambda tok, q: encode_prompt(tok, q, DEFAULT_PROMPT_TEMPLATE),
        oracle=oracle,
        max_new_tokens=16,
    )
    forget_rouge = result["forget_rouge_l"]
    assert forget_rouge["guarded"] < forget_rouge["unguarded"]
    assert result["retain_rouge_l"]["guarded_vs_unguarded"] > 0.9
    assert result["seconds_per_token"]["overhead"] > 0
    assert result["paraphrase_attack_rouge_l"] is not None
    assert result["verdict"]["status"] in ("forgotten", "not_forgotten")
    assert len(result["verdict"]["checks"]) == 3


def test_guards_compose(demo_guard):
    from core.methods.guard import Guard

    model, _, guard, forget, _, prompts = demo_guard
    half = len(guard.spans) // 2
    first = Guard(guard.info, guard.classifier, guard.spans[:half], guard.values)
    second = Guard(guard.info, guard.classifier, guard.spans[half:])
    prompt_ids = prompts(forget)[0]
    combined = GuardProcessor.combine([first, second], model, prompt_ids)
    alone = GuardProcessor.combine([guard], model, prompt_ids)
    assert sorted(combined.spans) == sorted(alone.spans)
    assert combined.banned_first == alone.banned_first
