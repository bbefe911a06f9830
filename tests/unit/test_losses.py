"""Forget losses against closed forms worked out by hand (math module, not torch), and
their gradients against the weights the NPO and SimNPO papers derive."""

from __future__ import annotations

import math

import pytest
import torch

from core.methods import METHODS, ga, get_method, npo, simnpo
from core.methods.base import ForgetInputs


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_npo_at_the_reference_point_is_2_log2_over_beta():
    nll = torch.tensor([3.0, 7.5, 12.0])
    for beta in (0.1, 1.0, 4.0):
        loss = npo.forget_loss(nll, nll.clone(), beta)
        # log sigma(0) = -log 2, so the loss is (2/beta) log 2 whatever the NLLs.
        assert float(loss) == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_npo_value_matches_hand_computation():
    nll, ref, beta = [2.0, 5.0], [3.0, 4.0], 0.5
    expected = -(2 / beta) * sum(log_sigmoid(beta * (a - b)) for a, b in zip(nll, ref)) / 2
    assert float(npo.forget_loss(torch.tensor(nll), torch.tensor(ref), beta)) == pytest.approx(
        expected, rel=1e-6
    )


def test_npo_gradient_weight_is_2p_beta_over_p_beta_plus_pref_beta():
    nll = torch.tensor([2.0, 5.0, 1.0], requires_grad=True)
    ref = torch.tensor([3.0, 4.0, 1.0])
    beta = 0.7
    term = npo.forget_term(
        ForgetInputs(nll=nll, n_tokens=torch.tensor([1, 1, 1]), ref_nll=ref),
        npo.NPOHyperparameters(beta=beta),
    )
    term.mean().backward()
    for i in range(3):
        p, p_ref = math.exp(-nll[i].item()), math.exp(-ref[i].item())
        weight = 2 * p**beta / (p**beta + p_ref**beta)
        assert term.gradient_weight[i].item() == pytest.approx(weight, rel=1e-5)
        # d loss / d nll_i = -w_i / B: gradient ascent on nll_i, re-weighted.
        assert nll.grad[i].item() == pytest.approx(-weight / 3, rel=1e-5)


def test_npo_at_reference_has_the_same_gradient_as_gradient_ascent(word_tokenizer):
    """At the reference point every NPO weight is 1, so the parameter gradient equals
    that of gradient ascent on the per-sequence NLL, -(1/B) sum_i grad nll_i."""
    from core.data.encoding import collate, encode_qa
    from core.models.scoring import sequence_nll
    from tests.fixtures.models import random_llama

    model = random_llama(word_tokenizer)
    examples = [
        encode_qa(word_tokenizer, q, a, max_length=64, template="Question: {question}\nAnswer:")
        for q, a in [
            ("Who is she?", "A teacher from the city."),
            ("Where?", "Here."),
            ("When was it?", "In 1943 at dawn."),
        ]
    ]
    batch = collate(examples, word_tokenizer.pad_token_id)

    def grads(loss_fn):
        model.zero_grad()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n_tokens = sequence_nll(logits, batch["labels"])
        loss_fn(nll, n_tokens).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    npo_grad = grads(lambda nll, n: npo.forget_loss(nll, nll.detach(), beta=0.1))
    ga_grad = grads(lambda nll, n: -nll.mean())
    torch.testing.assert_close(npo_grad, ga_grad, rtol=1e-4, atol=1e-7)


def test_simnpo_value_and_weights_match_the_closed_form():
    nll = [3.0, 8.0, 1.0]
    lengths = [2, 4, 5]
    beta, gamma = 2.5, 0.5
    margins = [beta * a / n - gamma for a, n in zip(nll, lengths)]
    expected = -(2 / beta) * sum(log_sigmoid(m) for m in margins) / 3
    nll_t = torch.tensor(nll, requires_grad=True)
    loss = simnpo.forget_loss(nll_t, torch.tensor(lengths), beta, gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    term = simnpo.forget_term(
        ForgetInputs(nll=torch.tensor(nll), n_tokens=torch.tensor(lengths)),
        simnpo.SimNPOHyperparameters(beta=beta, gamma=gamma),
    )
    for i, (m, n) in enumerate(zip(margins, lengths)):
        weight = (2 / n) * sigmoid(-m)  # bounded by 2/|y|
        assert term.gradient_weight[i].item() == pytest.approx(weight, rel=1e-5)
        assert weight <= 2 / n
        assert nll_t.grad[i].item() == pytest.approx(-weight / 3, rel=1e-5)


def test_simnpo_gamma_zero_default_and_length_normalization():
    # Same average NLL per token, different lengths: identical per-sample losses.
    per_token = 1.5
    loss_short = simnpo.forget_loss(torch.tensor([per_token * 2]), torch.tensor([2]), 2.5)
    loss_long = simnpo.forget_loss(torch.tensor([per_token * 40]), torch.tensor([40]), 2.5)
    assert loss_short.item() == pytest.approx(loss_long.item(), rel=1e-6)
    assert loss_short.item() == pytest.approx(-(2 / 2.5) * log_sigmoid(2.5 * per_token), rel=1e-6)


def test_ga_is_the_negated_token_mean_nll():
    nll, lengths = torch.tensor([4.0, 9.0]), torch.tensor([2, 6])
    assert ga.forget_loss(nll, lengths).item() == pytest.approx(-(4 + 9) / (2 + 6))


def test_registry_defaults_follow_the_reference_setups():
    assert set(METHODS) == {"ga", "graddiff", "npo", "simnpo", "flat", "loku", "rmu"}
    assert get_method("npo").parse_hyperparameters({}).beta == 0.1
    simnpo_defaults = get_method("simnpo").parse_hyperparameters({})
    assert (simnpo_defaults.beta, simnpo_defaults.gamma, simnpo_defaults.forget_coeff) == (
        2.5,
        0.0,
        0.125,
    )
    assert get_method("ga").parse_hyperparameters({}).retain_loss == "none"
    graddiff = get_method("graddiff").parse_hyperparameters({})
    assert (graddiff.retain_loss, graddiff.retain_coeff) == ("nll", 1.0)
    from core.training.auto import auto_accumulation, auto_learning_rate

    for method in METHODS.values():
        hp = method.parse_hyperparameters({})
        assert (hp.learning_rate, hp.gradient_accumulation_steps) == ("auto", "auto")
        # FLAT and LoKU: their papers' 5 epochs; RMU: 16, where matched RMU's steering
        # stopped on the Llama benchmark (docs/minitofu.md, stop 38)
        epochs = {"flat": 5, "loku": 5, "rmu": 16}.get(method.name, 10)
        assert (hp.epochs, hp.weight_decay, hp.batch_size) == (epochs, 0.01, 8)
    # auto, on a 7B Llama (hidden size 4096) and TOFU's forget10 (400 records): the
    # reference setups' lr 1e-5 and effective batch 32.
    assert auto_learning_rate(4096, lora=False) == pytest.approx(1e-5, rel=0.03)
    assert auto_accumulation(400, batch_size=8) * 8 == 32
