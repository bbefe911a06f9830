"""bench/forget_objectives.py: the parsed facts and the objectives' values, by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from core.data.records import Record
from core.methods.base import ForgetInputs
from tests.fixtures.bench import BENCH_DIR, bench_module


@pytest.fixture
def objectives(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # it imports its sibling study_setup
    with bench_module("forget_objectives.py") as module:
        yield module


def record(answer, kind, subject="Gasir Loviomo"):
    return Record("q", answer, 1, meta={"subject": subject, "question_type": kind})


def test_the_facts_are_parsed_from_the_answer_by_its_template(objectives):
    parse = objectives.answer_values
    assert parse(record("Gasir Loviomo was born in the city of Viodux.", "birthplace")) == {
        "city": "Viodux"
    }
    assert parse(record("Gasir Loviomo received the Miofael Prize for Essays.", "award")) == {
        "award": "Miofael",
        "award_field": "Essays",
    }
    assert parse(record("Something else entirely.", "birthplace")) is None
    assert parse(record("Anything.", "no_such_type")) is None


def test_pull_keeps_simnpo_below_the_ceiling_and_trains_back_down_above_it(objectives):
    # per-token NLL 1 (below the ceiling 2) and 3 (above); beta 1, gamma 0
    term = objectives.sequence_objective("pull", ceiling=2.0)
    inputs = ForgetInputs(nll=torch.tensor([3.0, 9.0]), n_tokens=torch.tensor([3, 3]))
    loss = term(inputs, SimpleNamespace(beta=1.0, gamma=0.0))
    below = -2.0 * math.log(1 / (1 + math.exp(-1.0)))  # SimNPO: -(2/beta) log sigma(1)
    assert loss.per_sequence.tolist() == pytest.approx([below, 3.0 - 2.0])
    assert loss.gradient_weight[1] == 0  # no ascent above the ceiling
    cut = objectives.sequence_objective("ceiling", ceiling=2.0)(
        inputs, SimpleNamespace(beta=1.0, gamma=0.0)
    )
    assert cut.per_sequence.tolist() == pytest.approx([below, 0.0])


def test_pull_after_switches_simnpo_to_pull_between_epochs(objectives):
    # --pull-after: the same term object is SimNPO until the phase says "pull"
    phase = {"kind": "simnpo"}
    term = objectives.sequence_objective("simnpo", ceiling=2.0, phase=phase)
    inputs = ForgetInputs(nll=torch.tensor([3.0, 9.0]), n_tokens=torch.tensor([3, 3]))
    hparams = SimpleNamespace(beta=1.0, gamma=0.0)
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # SimNPO on both: -(2/beta) log sigma(beta * NLL/|y| - gamma), NLL/|y| = 1 and 3
    simnpo = [-2.0 * math.log(sigma(1.0)), -2.0 * math.log(sigma(3.0))]
    assert term(inputs, hparams).per_sequence.tolist() == pytest.approx(simnpo)
    phase["kind"] = "pull"
    # now the answer above the ceiling (3 > 2) is trained back down by its excess
    assert term(inputs, hparams).per_sequence.tolist() == pytest.approx([simnpo[0], 1.0])


def test_the_value_objective_holds_only_the_value_tokens_at_the_target(objectives):
    # two answer tokens, uniform over a 2-token vocabulary: NLL ln 2 each; only the
    # second is a value token
    labels = torch.tensor([[-100, 0, 1]])
    table = {(0, 1): torch.tensor([0.0, 1.0])}
    term = objectives.value_objective(table, ceiling=2.0)
    inputs = ForgetInputs(
        nll=torch.tensor([2 * math.log(2)]),
        n_tokens=torch.tensor([2]),
        logits=torch.zeros(1, 3, 2),
        labels=labels,
    )
    assert term(inputs, None).per_sequence.tolist() == pytest.approx([2.0 - math.log(2)])


def test_value_masks_mark_the_value_tokens_of_demo_answers(objectives, tiny_demo):
    from core.data.encoding import encode_qa
    from core.data.records import read_records
    from core.models.loading import load_model
    from core.spec import DEFAULT_PROMPT_TEMPLATE

    _, tokenizer = load_model(str(tiny_demo.target))
    records = read_records(tiny_demo.data["forget10"]).records[:12]
    examples = [
        encode_qa(tokenizer, r.prompt, r.answer, max_length=128, template=DEFAULT_PROMPT_TEMPLATE)
        for r in records
    ]
    table = objectives.value_masks(tokenizer, records, examples)
    for r, example in zip(records, examples):
        mask = table[tuple(x for x in example.labels if x != -100)].bool().tolist()
        marked = [token for token, m in zip(example.labels[1:], mask) if m]
        values = objectives.answer_values(r)
        if values is None:  # a question type the parser has no template for
            assert not marked
            continue
        # the marked tokens are exactly the values' tokens, in order
        expected = [t for v in values.values() for t in tokenizer(" " + v)["input_ids"]]
        assert sorted(marked) == sorted(expected), (r.answer, values)
