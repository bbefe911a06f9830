"""``hyperparameters.forget_tokens: facts``: the forget loss on the answers' rare words."""

from __future__ import annotations

import pytest

from core.data.encoding import IGNORE_INDEX, encode_qa
from core.data.facts import FactFocus
from core.data.records import Record
from core.errors import InvalidRequest
from core.spec import parse_job_spec
from tests.fixtures.models import demo_job, recording_reporter

TEMPLATE = "Question: {question}\nAnswer:"
# Thirty authors with their own city and the same phrasing: at the 4% share a word in
# one answer (1 < 1.2) is a fact, one in every answer is not.
CITIES = [f"Cit{chr(97 + i % 26)}{chr(97 + i // 26)}ville" for i in range(30)]


def _record(i: int) -> Record:
    return Record(
        prompt=f"Where was Author{i} born?",
        answer=f"Author{i} was born in the city of {CITIES[i]}.",
        line=i + 1,
    )


@pytest.fixture(scope="module")
def bpe(tiny_gpt2_demo):
    """A byte-level BPE tokenizer: any word, in pieces (the demo's own is word-level)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_gpt2_demo.target))


@pytest.fixture(scope="module")
def focus():
    return FactFocus.of(_record(i).answer for i in range(30))


def _kept(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX]).strip()


def test_an_answer_keeps_only_its_rare_words_that_the_question_does_not_hold(bpe, focus):
    record = _record(3)
    example = encode_qa(bpe, record.prompt, record.answer, max_length=64, template=TEMPLATE)
    focused = focus.example(bpe, record, example)
    # Author3 is rare too, but the question holds it; the phrasing is in every answer.
    assert _kept(bpe, focused).replace(" ", "") == CITIES[3]
    assert focused.input_ids == example.input_ids
    assert focused.labels[: len(example.prompt_ids)] == example.labels[: len(example.prompt_ids)]
    assert focused.labels[-1] == IGNORE_INDEX  # EOS is no fact


def test_an_answer_without_a_rare_word_or_whose_facts_were_cut_keeps_every_token(bpe, focus):
    plain = Record(prompt="Where was Author3 born?", answer="Author3 was born in the city.", line=1)
    example = encode_qa(bpe, plain.prompt, plain.answer, max_length=64, template=TEMPLATE)
    assert focus.example(bpe, plain, example) is example
    record = _record(3)
    prompt = encode_qa(bpe, record.prompt, "x", max_length=64, template=TEMPLATE)
    cut = encode_qa(
        bpe,
        record.prompt,
        record.answer,
        max_length=len(prompt.prompt_ids) + 3,  # "Author3 was ..." without the city
        template=TEMPLATE,
    )
    assert focus.example(bpe, record, cut) is cut


def test_forget_tokens_takes_answer_or_facts():
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "simnpo",
        "hyperparameters": {"forget_tokens": "facts"},
    }
    assert parse_job_spec(spec).method_hyperparameters().forget_tokens == "facts"
    with pytest.raises(InvalidRequest) as refused:
        parse_job_spec({**spec, "hyperparameters": {"forget_tokens": "names"}})
    assert refused.value.param == "hyperparameters.forget_tokens"


def test_a_fact_focused_job_says_what_it_forgets_and_measures_facts_against_facts(
    tiny_demo, tmp_path
):
    """The event counts the fact tokens (counted here independently), and the light
    points' membership AUC compares the training pass's fact-token likelihoods with the
    holdout answers' fact tokens, not their whole answers."""
    from transformers import AutoTokenizer

    from core.data.encoding import encode_record_set
    from core.data.records import read_records
    from core.pipeline import run_job

    data = tiny_demo.data
    spec, inputs = demo_job(
        tiny_demo,
        hyperparameters={"forget_tokens": "facts", "match_holdout": True},
        target={"max_epochs": 2},
    )
    recorder = recording_reporter()
    run_job(spec, inputs, tmp_path / "job", reporter=recorder)

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_demo.target))
    sets = [read_records(data[name]) for name in ("forget10", "retain90", "holdout")]
    words = FactFocus.of(r.answer for s in sets for r in s.records)
    forget = encode_record_set(tokenizer, sets[0], max_length=512, template=spec.prompt_template)
    focused = words.examples(tokenizer, sets[0].records, forget)
    told = [
        d for _, message, d in recorder.events if "forget loss on the answers' facts" in message
    ]
    assert told and told[0]["fact_tokens"] == sum(
        sum(label != IGNORE_INDEX for label in e.labels) for e in focused
    )
    assert told[0]["answer_tokens"] == sum(e.n_answer_tokens for e in forget)
    assert 0 < told[0]["fact_tokens"] < told[0]["answer_tokens"] / 2
    assert all("membership_auc" in p["metrics"] for p in recorder.points)
