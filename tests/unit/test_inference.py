"""Decoding and prompt rendering of the model-serving process, on the tiny demo model."""

from __future__ import annotations

import threading

import pytest
import torch

from core.inference.generation import Sampling, decode, encode_chat, pick_token, render_chat
from core.inference.protocol import OpenAIError, parse_request

TEMPLATE = "Question: {question}\nAnswer:"


def generate(model, tokenizer, prompt: str, **sampling) -> tuple[list, str]:
    prompt_ids = encode_chat(tokenizer, [("user", prompt)], TEMPLATE)
    deltas = list(decode(model, tokenizer, prompt_ids, Sampling(**sampling), threading.Lock()))
    return deltas, "".join(delta.text for delta in deltas)


def test_chat_without_a_chat_template_uses_the_training_template(tiny_target):
    _, tokenizer = tiny_target
    turns = [("system", "Be brief."), ("user", "Who?"), ("assistant", "Ann."), ("user", "Where?")]
    text = render_chat(tokenizer, turns, TEMPLATE)
    assert text == "Be brief.\nQuestion: Who?\nAnswer: Ann.\nQuestion: Where?\nAnswer:"
    ids = encode_chat(tokenizer, turns, TEMPLATE)
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 10


def test_greedy_decoding_is_deterministic_and_stops_where_asked(tiny_target):
    model, tokenizer = tiny_target
    model.eval()
    deltas, text = generate(
        model, tokenizer, "Where was the author born?", max_new_tokens=10, temperature=0
    )
    assert (
        generate(model, tokenizer, "Where was the author born?", max_new_tokens=10, temperature=0)[
            1
        ]
        == text
    )
    assert deltas[-1].finish_reason in ("stop", "length") and not any(
        d.finish_reason for d in deltas[:-1]
    )
    assert deltas[-1].completion_tokens <= 10
    words = text.split()
    assert len(words) >= 2, text
    stop = words[1]
    _, cut = generate(
        model,
        tokenizer,
        "Where was the author born?",
        max_new_tokens=10,
        temperature=0,
        stop=[stop],
    )
    assert stop not in cut and text.startswith(cut)


def test_top_p_keeps_only_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    generator = torch.Generator().manual_seed(0)
    picked = {pick_token(logits, Sampling(1, top_p=0.7), generator) for _ in range(200)}
    assert picked == {0, 1}
    assert pick_token(logits, Sampling(1, temperature=0), generator) == 0


@pytest.mark.parametrize(
    "body, param",
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
            "max_tokens",
        ),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_bad_parameters_are_400s_naming_them(body, param):
    with pytest.raises(OpenAIError) as error:
        parse_request("chat/completions", body)
    assert error.value.status == 400 and error.value.param == param
    assert error.value.body()["error"]["type"] == "invalid_request_error"


def test_a_batch_decodes_each_request_as_alone(tiny_target):
    from core.inference.batching import Batcher

    model, tokenizer = tiny_target
    model.eval()
    questions = ["Where was the author born?", "Who?", "What did the author's father do for work?"]
    prompts = [encode_chat(tokenizer, [("user", q)], TEMPLATE) for q in questions]
    assert len({len(ids) for ids in prompts}) > 1  # left padding is exercised
    alone = [
        "".join(d.text for d in decode(model, tokenizer, ids, Sampling(12, temperature=0), lock))
        for ids, lock in zip(prompts, [threading.Lock()] * 3)
    ]
    batcher = Batcher(model, tokenizer, threading.Lock(), max_batch=8)
    try:
        # Submitted together, read afterwards: the three share one batch.
        streams = [batcher.submit(ids, Sampling(12, temperature=0)) for ids in prompts]
        together = ["".join(d.text for d in stream) for stream in streams]
        limited = list(batcher.submit(prompts[0], Sampling(2, temperature=0)))
    finally:
        batcher.close()
    assert together == alone
    assert limited[-1].finish_reason in ("length", "stop") and limited[-1].completion_tokens <= 2
