"""Prompt rendering and token-by-token decoding for the model-serving process.

The serving process decodes requests in batches (``decode_batch``, fed by
``core.inference.batching``); ``decode`` runs one sequence (evaluation, tests). Every
forward pass runs under the model's lock, which a guard's classifier shares.

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


class TextStream:
    """One sequence's tokens as text deltas: stops at an end-of-sequence token, a stop
    sequence or ``max_new_tokens``; text that could be the start of a stop sequence,
    or half of a multi-byte character, is held back until the next tokens settle it."""

    def __init__(self, tokenizer, sampling: Sampling, eos: set[int]):
        self.tokenizer, self.sampling, self.eos = tokenizer, sampling, eos
        self.holdback = max((len(stop) - 1 for stop in sampling.stop), default=0)
        self.generated: list[int] = []
        self.emitted = 0
        self.text = ""
        self.done = False

    def push(self, token: int) -> list[Delta]:
        if token in self.eos:
            return self._finish("stop")
        self.generated.append(token)
        self.text = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        stops = (self.text.find(stop) for stop in self.sampling.stop)
        stop_at = min((i for i in stops if i >= 0), default=-1)
        if stop_at >= 0:
            self.text = self.text[:stop_at]
            return self._finish("stop")
        deltas = []
        settled = len(self.text) - self.holdback
        if self.text.endswith("\ufffd"):  # an incomplete UTF-8 sequence so far
            settled = min(settled, len(self.text) - 1)
        if settled > self.emitted:
            deltas.append(Delta(self.text[self.emitted : settled], None, len(self.generated)))
            self.emitted = settled
        if len(self.generated) >= self.sampling.max_new_tokens:
            deltas += self._finish("length")
        return deltas

    def _finish(self, reason: str) -> list[Delta]:
        self.done = True
        return [Delta(self.text[self.emitted :], reason, len(self.generated))]


def seeded_generator(sampling: Sampling, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()
    return generator


def decode(
    model,
    tokenizer,
    prompt_ids: list[int],
    sampling: Sampling,
    lock: threading.Lock,
    processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[Delta]:
    """Deltas of one sequence's generated text (``TextStream``), the last with its
    finish reason; ``processor`` may change each step's logits given the tokens
    generated so far. The serving process batches requests instead (``decode_batch``)."""
    device = next(model.parameters()).device
    generator = seeded_generator(sampling, device)
    stream = TextStream(tokenizer, sampling, eos_token_ids(model, tokenizer))
    cache_argument = kv_cache_argument(model)
    inputs = torch.tensor([prompt_ids], device=device)
    cache = None
    while not stream.done:
        with lock, torch.inference_mode():
            output = model(input_ids=inputs, use_cache=True, **{cache_argument: cache})
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        logits = output.logits[0, -1]
        if processor is not None:  # a guard (core.methods.guard.GuardProcessor)
            logits = processor(stream.generated, logits)
        token = pick_token(logits, sampling, generator)
        yield from stream.push(token)
        inputs = torch.tensor([[token]], device=device)


@dataclass
class Row:
    """One request in a batch: its prompt, sampling, guard, and where deltas go."""

    prompt_ids: list[int]
    sampling: Sampling
    processor: Callable[[list[int], torch.Tensor], torch.Tensor] | None
    emit: Callable[[Delta], None]


def decode_batch(model, tokenizer, rows: Sequence[Row], lock: threading.Lock) -> None:
    """Decode several requests together: prompts left-padded into one batch, one
    forward pass per step for all of them, each row sampled with its own parameters
    and stopped on its own (a finished row idles until the batch ends)."""
    device = next(model.parameters()).device
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    width = max(len(row.prompt_ids) for row in rows)
    inputs = torch.tensor(
        [[pad] * (width - len(row.prompt_ids)) + row.prompt_ids for row in rows], device=device
    )
    attention = torch.tensor(
        [[0] * (width - len(row.prompt_ids)) + [1] * len(row.prompt_ids) for row in rows],
        device=device,
    )
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    streams = [TextStream(tokenizer, row.sampling, eos) for row in rows]
    generators = [seeded_generator(row.sampling, device) for row in rows]
    cache_argument = kv_cache_argument(model)
    cache = None
    while not all(stream.done for stream in streams):
        with lock, torch.inference_mode():
            output = model(
                input_ids=inputs,
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **{cache_argument: cache},
            )
        cache = output["cache"] if "cache" in output else output["past_key_values"]
        next_tokens = []
        for index, (row, stream) in enumerate(zip(rows, streams)):
            if stream.done:
                next_tokens.append(pad)
                continue
            logits = output.logits[index, -1]
            if row.processor is not None:
                logits = row.processor(stream.generated, logits)
            token = pick_token(logits, row.sampling, generators[index])
            for delta in stream.push(token):
                row.emit(delta)
            next_tokens.append(token)
        inputs = torch.tensor(next_tokens, device=device)[:, None]
        attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
