"""Turn records into token sequences with the prompt masked out of the labels.

For a question/answer record the sequence is ``prompt_ids + answer_ids + [eos]`` and
the labels are ``-100`` on the prompt, so every loss and metric sees answer tokens
only. Prompts use the tokenizer's chat template when it has one, else the job's
template (``Question: {question}\\nAnswer:``). Raw text has an empty prompt (just BOS)
and is cut into ``max_length`` windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.data.records import Record, RecordSet
from core.data.templates import render_template
from core.errors import DataValidationError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    #: index of the source record (several text windows may share one)
    record_index: int
    #: ``forget_tokens: both``: the labels of the answer's fact tokens only (the forget
    #: loss's second term, ``core.data.facts``); None elsewhere
    fact_labels: list[int] | None = None

    @property
    def n_answer_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def prompt_ids(self) -> list[int]:
        """Tokens before the first answer token: what generation starts from."""
        first = next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX)
        return self.input_ids[:first]

    @property
    def answer_ids(self) -> list[int]:
        return [t for t, label in zip(self.input_ids, self.labels) if label != IGNORE_INDEX]


def render_prompt(tokenizer, question: str, template: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return render_template(template, question)


def _bos(tokenizer) -> list[int]:
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None else []


def encode_prompt(tokenizer, question: str, template: str) -> list[int]:
    text = render_prompt(tokenizer, question, template)
    return _prompt_ids(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_answer(tokenizer, answer: str) -> list[int]:
    text = answer_text(tokenizer, answer)
    return _answer_ids(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    # One call for many texts: a fast tokenizer encodes the batch in Rust, while the
    # Python side of each call costs about as much as the encoding of a short answer.
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _prompt_ids(tokenizer, ids: list[int]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        return list(ids)  # chat templates carry their own BOS
    return _bos(tokenizer) + list(ids)


def answer_text(tokenizer, answer: str) -> str:
    """The text an answer's tokens come from (``encode_answer`` adds EOS)."""
    # A leading space keeps BPE/sentencepiece word boundaries as in running text; the
    # chat-template case starts the answer on a fresh turn, so no space there.
    return answer.strip() if getattr(tokenizer, "chat_template", None) else " " + answer.strip()


def _answer_ids(tokenizer, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None else [])


def encode_qa(
    tokenizer,
    question: str,
    answer: str,
    *,
    max_length: int,
    template: str,
    record_index: int = 0,
    where: tuple[str | None, int | None, str] = (None, None, "answer"),
) -> EncodedExample:
    return _joined(
        encode_prompt(tokenizer, question, template),
        encode_answer(tokenizer, answer),
        max_length=max_length,
        record_index=record_index,
        where=where,
    )


def encode_qa_many(
    tokenizer,
    pairs: Sequence[tuple[str, str, int]],
    *,
    max_length: int,
    template: str,
) -> list[EncodedExample]:
    """``encode_qa`` of every ``(question, answer, record_index)``, the same sequences,
    with each distinct prompt tokenized once and all texts in two tokenizer calls: an
    evaluation probe scores seven answers per question (truth ratios) at every point."""
    questions = list(dict.fromkeys(question for question, _, _ in pairs))
    prompts = dict(
        zip(
            questions,
            _tokenize(tokenizer, [render_prompt(tokenizer, q, template) for q in questions]),
        )
    )
    answers = _tokenize(tokenizer, [answer_text(tokenizer, a) for _, a, _ in pairs])
    return [
        _joined(
            _prompt_ids(tokenizer, prompts[question]),
            _answer_ids(tokenizer, answer_ids),
            max_length=max_length,
            record_index=index,
        )
        for (question, _, index), answer_ids in zip(pairs, answers)
    ]


def _joined(
    prompt_ids: list[int],
    answer_ids: list[int],
    *,
    max_length: int,
    record_index: int,
    where: tuple[str | None, int | None, str] = (None, None, "answer"),
) -> EncodedExample:
    room = max_length - len(prompt_ids)
    if room <= 0:
        file, line, _ = where
        raise DataValidationError(
            f"the prompt alone is {len(prompt_ids)} tokens, so max_length={max_length} leaves "
            "no room for the answer; shorten it or raise hyperparameters.max_length",
            file=file,
            line=line,
            field="question" if where[2] == "answer" else "prompt",
            code="answer_truncated",
        )
    answer_ids = answer_ids[:room]
    return EncodedExample(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        record_index=record_index,
    )


def encode_text(
    tokenizer, text: str, *, max_length: int, record_index: int = 0
) -> list[EncodedExample]:
    """Raw text, cut into windows of ``max_length`` tokens, each starting with BOS."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = _bos(tokenizer)
    width = max_length - len(bos)
    windows = [ids[start : start + width] for start in range(0, len(ids), width)] or [[]]
    return [
        EncodedExample(
            input_ids=bos + chunk,
            labels=[IGNORE_INDEX] * len(bos) + chunk,
            record_index=record_index,
        )
        for chunk in windows
        if chunk
    ]


def encode_record_set(
    tokenizer, records: RecordSet, *, max_length: int, template: str
) -> list[EncodedExample]:
    """Encode a whole set; errors name the file, line and field."""
    examples: list[EncodedExample] = []
    answer_field = {"qa": "answer", "completion": "completion", "text": "text"}[records.kind]
    for index, record in enumerate(records.records):
        if records.kind == "text":
            examples.extend(
                encode_text(tokenizer, record.answer, max_length=max_length, record_index=index)
            )
            continue
        examples.append(
            encode_qa(
                tokenizer,
                record.prompt,
                record.answer,
                max_length=max_length,
                template=template,
                record_index=index,
                where=(records.name, record.line, answer_field),
            )
        )
    if not examples:
        raise DataValidationError(
            "no tokens after encoding", file=records.name, code="empty_dataset"
        )
    return examples


def encode_records(
    tokenizer, records: Sequence[Record], *, max_length: int, template: str, answers=None
) -> list[EncodedExample]:
    """Encode question/answer pairs, optionally with other answers (paraphrased,
    perturbed) in place of each record's own."""
    answers = answers if answers is not None else [r.answer for r in records]
    return [
        encode_qa(
            tokenizer, r.prompt or "", a, max_length=max_length, template=template, record_index=i
        )
        for i, (r, a) in enumerate(zip(records, answers))
    ]


def collate(
    examples: Sequence[EncodedExample], pad_token_id: int, *, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch; ``attention_mask`` is 0 and ``labels`` -100 on padding."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    with_facts = bool(examples) and all(e.fact_labels is not None for e in examples)
    if with_facts:
        batch["fact_labels"] = torch.full_like(labels, IGNORE_INDEX)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, span] = torch.tensor(example.input_ids)
        labels[row, span] = torch.tensor(example.labels)
        attention_mask[row, span] = 1
        if with_facts:
            batch["fact_labels"][row, span] = torch.tensor(example.fact_labels)
    return batch


def collate_prompts(prompts: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
