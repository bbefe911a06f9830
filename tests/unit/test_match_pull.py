"""``hyperparameters.match_pull``: answers past their ``match_holdout`` ceiling are pulled
back by a hinge on their per-token NLL. The term and its gradient are checked against
values worked out by hand; the loop's use of it by what it must do to over-forgotten
answers (raise their likelihood) and to the rest (nothing)."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import InvalidRequest
from core.methods import get_method
from core.spec import parse_job_spec
from core.training.loop import Callbacks, _ForgetView, pulled_back, run_training
from tests.unit.test_two_ceilings import _train as train_parts
from tests.unit.test_two_ceilings import paired  # noqa: F401 (a fixture)


def _view(nll, n_tokens, ceiling, rows, block=4):
    return _ForgetView(
        labels=None,
        nll=torch.tensor(nll, dtype=torch.float32, requires_grad=True),
        n_tokens=torch.tensor(n_tokens),
        per_token=[],
        ceiling=torch.tensor(ceiling, dtype=torch.float64),
        denominators={"sequence": block, "token": 99},
        rows=torch.tensor(rows),
    )


def test_the_pull_is_the_hinge_past_each_ceiling_over_the_block():
    # per-token NLL 6/2 = 3 (ceiling 2: 1 past), 4/4 = 1 (ceiling 2: below, nothing),
    # 9/3 = 3 (no ceiling: inf, nothing), 10/2 = 5 (ceiling 1, but padding: nothing),
    # 0 tokens (nothing); weight 0.5, a block of 4 sequences: 0.5 * 1 / 4.
    view = _view(
        [6.0, 4.0, 9.0, 10.0, 0.0],
        [2, 4, 3, 2, 0],
        [2.0, 2.0, math.inf, 1.0, 0.5],
        [True, True, True, False, True],
    )
    term = pulled_back(view, 0.5)
    assert float(term.detach()) == pytest.approx(0.125)
    term.backward()
    # d/d nll_0 = 0.5 / (2 tokens * 4 sequences); every other row untouched
    assert view.nll.grad.tolist() == pytest.approx([0.0625, 0, 0, 0, 0])


def test_no_weight_or_no_ceilings_pull_nothing():
    view = _view([6.0], [2], [2.0], [True])
    assert pulled_back(view, 0.0) == 0.0
    assert pulled_back(view._replace(ceiling=None), 1.0) == 0.0


def test_a_ceiling_of_minus_infinity_is_no_ceiling_to_pull_to():
    assert float(pulled_back(_view([6.0], [2], [-math.inf], [True]), 1.0).detach()) == 0.0


def _forget_nll(model, tokenizer, forget):
    from core.evaluation.scoring import pad_token_id, score_sequences

    model.eval()
    scores = score_sequences(model, forget, pad_token_id=pad_token_id(tokenizer), batch_size=16)
    return sum(s.nll for s in scores) / sum(s.n_tokens for s in scores)


def _train(tiny_demo, tiny_encoded, ceiling, pull):
    """One epoch of SimNPO (no retain term) on the retrain oracle, which never saw the
    forget answers (per-token NLL of several nats), with every ceiling at ``ceiling``."""
    from core.models.loading import load_model

    tokenizer, forget, _ = tiny_encoded
    model, _ = load_model(str(tiny_demo.retrain), dtype="fp32")
    before = _forget_nll(model, tokenizer, forget)
    hparams = get_method("simnpo").parse_hyperparameters(
        {
            "learning_rate": 1e-3,
            "epochs": 1,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            "weight_decay": 0,
            "retain_loss": "none",
            "match_holdout": True,
            "match_pull": pull,
        }
    )
    result = run_training(
        model,
        tokenizer,
        forget,
        None,
        get_method("simnpo"),
        hparams,
        seed=3,
        callbacks=Callbacks(
            on_evaluation=lambda point: False,
            forget_ceilings=lambda: [ceiling] * len(forget),
        ),
    )
    return before, _forget_nll(result.model, tokenizer, forget), result


def test_over_forgotten_answers_are_pulled_back_and_no_further(tiny_demo, tiny_encoded):
    # A ceiling of 0 puts every answer past it, so the only gradient is the pull, which
    # lowers their NLL; without it nothing moves.
    before, pulled, result = _train(tiny_demo, tiny_encoded, 0.0, 1.0)
    assert pulled < before
    _, unpulled, still = _train(tiny_demo, tiny_encoded, 0.0, 0.0)
    assert unpulled == pytest.approx(before) and still.history[0].grad_norm == 0.0
    # Ceilings far above every answer: none is past, the pull adds nothing.
    _, free, _ = _train(tiny_demo, tiny_encoded, 1e6, 0.0)
    _, with_pull, _ = _train(tiny_demo, tiny_encoded, 1e6, 1.0)
    assert with_pull == free


def test_the_pull_needs_matching():
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "simnpo",
        "hyperparameters": {"match_holdout": True, "match_pull": 0.5},
    }
    assert parse_job_spec(spec).method_hyperparameters().match_pull == 0.5
    with pytest.raises(InvalidRequest) as refused:
        parse_job_spec({**spec, "hyperparameters": {"match_pull": 0.5}})
    assert refused.value.param == "hyperparameters.match_pull"


def test_under_both_only_the_phrasing_is_pulled(tiny_demo, paired):  # noqa: F811
    """Every part past a ceiling of 0 (no push anywhere): the step of ``both`` is the pull
    on the answers' phrasing alone, as if trained on their phrasing only."""
    tokenizer, rest, _, both = paired
    _, phrasing = train_parts(tiny_demo, tokenizer, rest, lambda n: [0.0] * n, match_pull=1.0)
    _, parts = train_parts(tiny_demo, tokenizer, both, lambda n: [[0.0, 0.0]] * n, match_pull=1.0)
    _, still = train_parts(tiny_demo, tokenizer, both, lambda n: [[0.0, 0.0]] * n)
    moved = False
    for name, value in phrasing.items():
        assert torch.allclose(parts[name], value, atol=1e-6), name
        moved = moved or not torch.equal(still[name], value)
    assert moved
