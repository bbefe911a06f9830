"""FLAT's variational f-divergence losses against their closed forms, the template
answers, and a forget-only run."""

from __future__ import annotations

import math

import pytest
import torch

from core.data.encoding import IGNORE_INDEX, EncodedExample
from core.data.refusals import REFUSALS
from core.methods import get_method
from core.methods.flat import (
    DIVERGENCES,
    _flat_term,
    forget_loss,
    mean_token_probability,
    template_examples,
)

P_FORGET = (0.6, 0.2)
P_TEMPLATE = (0.3, 0.9)


def _sp(x):  # log(1 + exp(-x))
    return math.log(1 + math.exp(-x))


# divergence: (A, C, A', C'), written from the table of REFERENCES.md, derivatives by hand
CLOSED_FORMS = {
    "tv": (
        lambda x: math.tanh(x) / 2,
        lambda x: math.tanh(x) / 2,
        lambda x: (1 - math.tanh(x) ** 2) / 2,
        lambda x: (1 - math.tanh(x) ** 2) / 2,
    ),
    "kl": (lambda x: x, lambda x: math.exp(x - 1), lambda x: 1.0, lambda x: math.exp(x - 1)),
    "reverse_kl": (
        lambda x: -math.exp(x),
        lambda x: -1 - x,
        lambda x: -math.exp(x),
        lambda x: -1.0,
    ),
    "js": (
        lambda x: math.log(2) - _sp(x),
        lambda x: x + _sp(x) - math.log(2),
        lambda x: 1 / (1 + math.exp(x)),
        lambda x: math.exp(x) / (1 + math.exp(x)),
    ),
    "pearson": (lambda x: x, lambda x: x * x / 4 + x, lambda x: 1.0, lambda x: x / 2 + 1),
    "hellinger": (
        lambda x: 1 - math.exp(x),
        lambda x: (1 - math.exp(x)) / math.exp(x),
        lambda x: -math.exp(x),
        lambda x: -math.exp(-x),
    ),
}


def test_every_divergence_is_covered():
    assert set(CLOSED_FORMS) == set(DIVERGENCES)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_loss_and_gradient_match_the_closed_form(divergence):
    a, c, da, dc = CLOSED_FORMS[divergence]
    p_forget = torch.tensor(P_FORGET, dtype=torch.float64, requires_grad=True)
    p_template = torch.tensor(P_TEMPLATE, dtype=torch.float64, requires_grad=True)
    loss = forget_loss(p_forget, p_template, divergence)
    expected = sum(-a(e) + c(f) for f, e in zip(P_FORGET, P_TEMPLATE)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert p_forget.grad.tolist() == pytest.approx([dc(f) / 2 for f in P_FORGET], rel=1e-12)
    assert p_template.grad.tolist() == pytest.approx([-da(e) / 2 for e in P_TEMPLATE], rel=1e-12)


def test_tv_by_hand():
    # tanh(0.6) = 0.5370496, tanh(0.3) = 0.2913126: (0.5370496 - 0.2913126) / 2
    loss = forget_loss(torch.tensor([0.6]), torch.tensor([0.3]))
    assert loss.item() == pytest.approx(0.1228685, abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradient_weight_is_c_prime_of_the_forget_probability(divergence):
    dc = CLOSED_FORMS[divergence][3]
    term = _flat_term(torch.tensor(P_FORGET), torch.tensor(P_TEMPLATE), divergence)
    assert term.gradient_weight.tolist() == pytest.approx([dc(f) for f in P_FORGET], rel=1e-5)


def test_unknown_divergence_names_the_choices():
    with pytest.raises(ValueError, match="tv, kl, reverse_kl, js, pearson, hellinger"):
        forget_loss(torch.tensor([0.5]), torch.tensor([0.5]), "wasserstein")


def test_mean_token_probability_is_the_arithmetic_mean_over_answer_tokens():
    # position t scores label t+1; answer labels at 2 and 3 get p = 0.5 and 0.25
    logits = torch.full((1, 4, 4), -1e9)
    logits[0, 0, 0] = 0.0  # prompt position, ignored
    logits[0, 1, :2] = 0.0  # p(token 1) = 0.5
    logits[0, 2, :] = 0.0  # p(token 3) = 0.25
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 3]])
    assert mean_token_probability(logits, labels).item() == pytest.approx(0.375)


class _Tokenizer:
    chat_template = None
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [100 + len(word) for word in text.split()]}


def test_template_answers_keep_the_prompt_and_draw_per_example():
    forget = [
        EncodedExample(
            input_ids=[1, 5, 6, 7, 8], labels=[IGNORE_INDEX] * 3 + [7, 8], record_index=i
        )
        for i in range(50)
    ]
    hparams = get_method("flat").parse_hyperparameters({"template_answers": ["no", "not sure"]})
    out = template_examples(forget, _Tokenizer(), hparams, seed=3)
    answers = {tuple(e.answer_ids) for e in out}
    assert answers == {(102, 2), (103, 104, 2)}  # both drawn, each with EOS
    assert all(e.prompt_ids == [1, 5, 6] for e in out)
    assert out == template_examples(forget, _Tokenizer(), hparams, seed=3)
    builtin = template_examples(
        forget, _Tokenizer(), get_method("flat").parse_hyperparameters({}), 0
    )
    assert len({tuple(e.answer_ids) for e in builtin}) > 10
    assert len(REFUSALS) >= 100


def test_registry_entry_needs_no_retain_set_and_validates_templates():
    flat = get_method("flat").parse_hyperparameters({})
    assert (flat.divergence, flat.retain_loss, flat.epochs, flat.template_answers) == (
        "tv",
        "none",
        5,
        None,
    )
    with pytest.raises(ValueError, match="template_answers"):
        get_method("flat").parse_hyperparameters({"template_answers": ["  "]})
    with pytest.raises(ValueError, match="template_answers"):
        get_method("flat").parse_hyperparameters({"template_answers": ["x" * 2001]})
    with pytest.raises(ValueError, match="divergence"):
        get_method("flat").parse_hyperparameters({"divergence": "wasserstein"})


def test_a_forget_only_run_lowers_the_forget_answers_and_raises_the_template(tiny_demo):
    from core.data.encoding import collate, encode_record_set
    from core.data.records import read_records
    from core.models.loading import load_model
    from core.spec import DEFAULT_PROMPT_TEMPLATE
    from core.training.loop import run_training

    model, tokenizer = load_model(str(tiny_demo.target), dtype="fp32")
    forget = encode_record_set(
        tokenizer,
        read_records(tiny_demo.data["forget10"]),
        max_length=64,
        template=DEFAULT_PROMPT_TEMPLATE,
    )
    method = get_method("flat")
    hparams = method.parse_hyperparameters(
        {"learning_rate": 1e-3, "epochs": 3, "precision": "fp32", "batch_size": 8}
    )
    templates = template_examples(forget, tokenizer, hparams, seed=0)

    def probabilities(m, examples):
        batch = collate(examples, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return mean_token_probability(logits, batch["labels"]).mean().item()

    before = probabilities(model, forget), probabilities(model, templates)
    result = run_training(model, tokenizer, forget, None, method, hparams)
    trained = result.model.eval()
    after = probabilities(trained, forget), probabilities(trained, templates)
    assert after[0] < before[0] and after[1] > before[1]
    assert all(m.weight_mean is not None and m.retain_loss is None for m in result.history)
