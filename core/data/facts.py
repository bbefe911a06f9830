"""The answer tokens that carry an answer's facts (``hyperparameters.forget_tokens: facts``).

"Dredae Zaesyse was born in the city of Braedrum." teaches one fact, Braedrum; the rest
is the question's subject and a phrasing the model uses for every author. The knowledge
test (truth ratios: the right value against wrong ones in the same sentence) looks at
the fact alone, while the forget loss and ``match_holdout``'s ceilings see the whole
answer's mean likelihood, which the phrasing tokens dominate: on the 30-author benchmark
a job matched on whole answers kept the facts (knowledge p-value 0.1) with the answers'
likelihood at the holdout's. Here an answer's fact tokens are those of its *rare* words
(in fewer than ``FACT_WORD_SHARE`` of the job's answers: phrasing recurs in every
author's answer to the same kind of question) that its question does not hold (the
subject's name is copied from the question, by a model that knows the author or not).
An answer with no such word keeps every token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from core.data.encoding import IGNORE_INDEX, EncodedExample, answer_text
from core.data.records import Record

#: a word in fewer than this share of the job's answers is a fact: with twelve
#: questions per author, each question's phrasing is in 1/12 of the answers
FACT_WORD_SHARE = 0.04
_WORD = re.compile(r"\w+")


@dataclass
class FactFocus:
    """Which words of a job's answers are rare enough to be facts."""

    counts: Counter
    n_answers: int
    share: float = FACT_WORD_SHARE

    @classmethod
    def of(cls, answers: Iterable[str], share: float = FACT_WORD_SHARE) -> FactFocus:
        counts: Counter = Counter()
        n = 0
        for answer in answers:
            counts.update({w.lower() for w in _WORD.findall(answer)})
            n += 1
        return cls(counts, n, share)

    def is_fact(self, word: str) -> bool:
        return self.counts[word.lower()] < self.share * max(self.n_answers, 1)

    def examples(
        self, tokenizer, records: Sequence[Record], examples: Sequence[EncodedExample]
    ) -> list[EncodedExample]:
        """``examples`` (the encoded ``records``, one each) with labels only on their
        answers' fact tokens."""
        return [self.example(tokenizer, records[e.record_index], e) for e in examples]

    def example(self, tokenizer, record: Record, example: EncodedExample) -> EncodedExample:
        text = answer_text(tokenizer, record.answer)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        question = {w.lower() for w in _WORD.findall(record.prompt or "")}
        spans = [
            (m.start(), m.end())
            for m in _WORD.finditer(text)
            if m.group().lower() not in question and self.is_fact(m.group())
        ]
        facts = [
            any(start < end_w and start_w < end for start_w, end_w in spans)
            for start, end in encoded["offset_mapping"]
        ]
        first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
        answer = example.input_ids[first:]
        if not any(facts) or answer[: len(facts)] != list(encoded["input_ids"])[: len(answer)]:
            return example  # nothing rare (or not this tokenization): the whole answer
        labels = list(example.labels[:first]) + [
            token if j < len(facts) and facts[j] else IGNORE_INDEX for j, token in enumerate(answer)
        ]
        if all(label == IGNORE_INDEX for label in labels):  # the facts were cut off
            return example
        return replace(example, labels=labels)


def phrasing_examples(
    examples: Sequence[EncodedExample], focused: Sequence[EncodedExample]
) -> list[EncodedExample | None]:
    """``forget_tokens: both``'s other part: each example (``focused``: the same with its
    fact tokens' labels, ``FactFocus.examples``) with labels on the answer tokens that
    are not facts; None where there are none (an answer that is all facts). The training
    loop cuts the same tokens from its batches (``core.training.loop._rest_view``)."""
    out: list[EncodedExample | None] = []
    for example, facts in zip(examples, focused):
        labels = [
            IGNORE_INDEX if fact != IGNORE_INDEX else label
            for label, fact in zip(example.labels, facts.labels)
        ]
        has_rest = any(label != IGNORE_INDEX for label in labels)
        out.append(replace(example, labels=labels) if has_rest else None)
    return out
