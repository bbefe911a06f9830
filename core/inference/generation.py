"""Prompt rendering and token-by-token decoding for the model-serving process.

One request decodes with its own KV cache; the forward pass of each step runs under
the model's lock, so concurrent requests on one model take turns step by step (a slow
streaming client does not hold the model for its whole answer).

Sampling: temperature 0 is greedy (argmax, deterministic); otherwise logits are
divided by the temperature, cut to the smallest set of tokens whose probability mass
reaches ``top_p``, and sampled with a generator seeded by ``seed`` when given.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from core.data.templates import render_template

#: OpenAI's "developer" role is the newer name of "system".
ROLE_ALIASES = {"developer": "system"}


@dataclass
class Sampling:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Delta:
    """Text decoded since the previous delta; the last one carries ``finish_reason``
    (``stop``: end of sequence or a stop sequence, ``length``: max tokens)."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def encode_completion_prompt(tokenizer, prompt: str) -> list[int]:
    return _bos(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_chat(tokenizer, messages: Sequence[tuple[str, str]], prompt_template: str) -> list[int]:
    """``(role, text)`` messages as prompt tokens ending where the assistant's answer
    starts (``render_chat``)."""
    ids = tokenizer(render_chat(tokenizer, messages, prompt_template), add_special_tokens=False)
    if getattr(tokenizer, "chat_template", None):
        return ids["input_ids"]  # chat templates carry their own BOS
    return _bos(tokenizer) + ids["input_ids"]


def render_chat(tokenizer, messages: Sequence[tuple[str, str]], prompt_template: str) -> str:
    """With a chat template, that template. Without one, the prompt template the model
    was trained with (its manifest's, else ``Question: {question}\nAnswer:``): a
    system message is a line before everything, each user turn is the template around
    its text, and each assistant turn follows as the answer."""
    messages = [(ROLE_ALIASES.get(role, role), text) for role, text in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": role, "content": text} for role, text in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
    pieces = []
    for role, text in messages:
        if role == "system":
            pieces.append(text.strip() + "\n")
        elif role == "user":
            pieces.append(render_template(prompt_template, text.strip()))
        else:
            pieces.append(" " + text.strip() + "\n")
    return "".join(pieces)


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {token for token in ids if token is not None}


def kv_cache_argument(model) -> str:
    """transformers 5 names the KV cache ``cache``; before, ``past_key_values``."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def pick_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep a token when the mass before it is still short of top_p (the first always).
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def decode(
    model,
    tokenizer,
    prompt_ids: list[int],
    sampling: Sampling,
    lock: threading.Lock,
    processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[Delta]:
    """Deltas of generated text, the last with its finish reason; ``processor`` may
    change each step's logits given the tokens generated so far. Text that could be
    the start of a stop sequence, or half of a multi-byte character, is held back
    until the next tokens settle it."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()
    eos = eos_token_ids(model, tokenizer)
    holdback = max((len(stop) - 1 for stop in sampling.stop), default=0)
    cache_argument = kv_cache_argument(model)
    inputs = torch.tensor([prompt_ids], device=device)
    cache = None
    generated: list[int] = []
    emitted = 0
    text = ""
    finish = "length"
    for _ in range(sampling.max_new_tokens):
        with lock, torch.inference_mode():
            output = model(input_ids=inputs, use_cache=True, **{cache_argument: cache})
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        logits = output.logits[0, -1]
        if processor is not None:  # a guard (core.methods.guard.GuardProcessor)
            logits = processor(generated, logits)
        token = pick_token(logits, sampling, generator)
        if token in eos:
            finish = "stop"
            break
        generated.append(token)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        stop_at = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
        if stop_at >= 0:
            text, finish = text[:stop_at], "stop"
            break
        settled = len(text) - holdback
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence so far
            settled = min(settled, len(text) - 1)
        if settled > emitted:
            yield Delta(text[emitted:settled], completion_tokens=len(generated))
            emitted = settled
        inputs = torch.tensor([[token]], device=device)
    yield Delta(text[emitted:], finish_reason=finish, completion_tokens=len(generated))
