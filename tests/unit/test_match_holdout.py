"""Distribution-matched forgetting (``hyperparameters.match_holdout``): each forget answer
is pushed only while it is likelier than the holdout answer of its rank. The ceilings are
checked against quantiles worked out by hand; the loop's use of them by what a ceiling
must do to a step's gradient (none past it, all below it)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest
from core.methods import get_method
from core.spec import parse_job_spec
from core.training.loop import Callbacks, run_training
from core.training.state import TrainingState
from core.verification import matched_ceilings
from tests.fixtures.models import demo_job, recording_reporter


def test_each_forget_answer_gets_the_holdout_answer_of_its_rank():
    # Three forget answers ranked 0 (nll 1.0), 2 (2.0), 1 (3.0): levels (k + 0.5) / 3 =
    # 1/6, 1/2, 5/6 of holdout [1, 2, 3, 4]; linear quantiles sit at positions 3 * level
    # = 0.5, 1.5, 2.5, i.e. 1.5, 2.5, 3.5. Example 3 was not measured: no ceiling.
    ceilings = matched_ceilings({0: 1.0, 1: 3.0, 2: 2.0}, np.array([4.0, 1.0, 3.0, 2.0]), 4)
    assert ceilings == pytest.approx([1.5, 3.5, 2.5, None])


def test_a_shift_matches_each_answer_to_a_less_likely_holdout_answer():
    # levels 1/6 + 0.2, 1/2 + 0.2, 5/6 + 0.2 (capped at 1): positions 3 * level = 1.1,
    # 2.1, 3: values 2.1, 3.1, 4.
    ceilings = matched_ceilings(
        {0: 1.0, 1: 3.0, 2: 2.0}, np.array([4.0, 1.0, 3.0, 2.0]), 3, shift=0.2
    )
    assert ceilings == pytest.approx([2.1, 4.0, 3.1])


def test_no_holdout_measurement_gives_no_ceilings():
    assert matched_ceilings({0: 1.0}, np.array([]), 2) == [None, None]


@pytest.fixture(scope="module")
def tiny_data(tiny_encoded):
    tokenizer, forget, _ = tiny_encoded
    return tokenizer, forget


def _train(tiny_demo, tiny_data, ceilings, *, match=True):
    """Two epochs of gradient ascent (no retain term) on the tiny demo's forget10."""
    from core.models.loading import load_model

    tokenizer, forget = tiny_data
    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    hparams = get_method("ga").parse_hyperparameters(
        {
            "learning_rate": 1e-3,
            "epochs": 2,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            "weight_decay": 0,
            "match_holdout": match,
        }
    )
    asked = []

    def ask():
        asked.append(True)
        return ceilings(len(forget)) if callable(ceilings) else ceilings

    result = run_training(
        model,
        tokenizer,
        forget,
        None,
        get_method("ga"),
        hparams,
        seed=3,
        callbacks=Callbacks(on_evaluation=lambda point: False, forget_ceilings=ask),
    )
    weights = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    return result, weights, asked


def test_answers_past_their_ceilings_are_not_pushed(tiny_demo, tiny_data):
    result, _, asked = _train(tiny_demo, tiny_data, lambda n: [-math.inf] * n)
    assert [m.grad_norm for m in result.history] == [0.0] * len(result.history)
    # The forget loss is still reported, so the curve shows where the answers stand.
    assert all(m.forget_loss and m.forget_loss < 0 for m in result.history)
    assert len(asked) == 1 + 2  # at the start and after each of the two epochs' points


def test_ceilings_above_every_answer_train_as_without_them(tiny_demo, tiny_data):
    _, free, _ = _train(tiny_demo, tiny_data, None, match=False)
    _, unmeasured, _ = _train(tiny_demo, tiny_data, lambda n: [None] * n)
    _, high, _ = _train(tiny_demo, tiny_data, lambda n: [1e6] * n)
    for name, value in free.items():
        assert unmeasured[name].equal(value) and high[name].equal(value), name


def test_matching_needs_a_target():
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "simnpo",
        "hyperparameters": {"match_holdout": True},
    }
    assert parse_job_spec(spec).method_hyperparameters().match_holdout
    with pytest.raises(InvalidRequest) as refused:
        parse_job_spec({**spec, "target": None})
    assert refused.value.param == "hyperparameters.match_holdout"


def test_matching_without_a_holdout_set_says_so(tiny_demo, tmp_path):
    """No holdout set, no ceilings: the job trains as without match_holdout, and says so."""
    from core.pipeline import run_job

    spec, inputs = demo_job(
        tiny_demo, holdout=False, hyperparameters={"match_holdout": True}, target={"max_epochs": 1}
    )
    recorder = recording_reporter()
    run_job(spec, inputs, tmp_path / "job", reporter=recorder)
    assert any("match_holdout needs a holdout set" in m for m, _ in recorder.of("warning"))


def test_a_resumed_run_takes_up_the_ceilings_of_its_point(tiny_demo, tiny_data, tmp_path):
    """The ceilings are part of what a resumed run needs (the monitor keeps them in its
    state): resumed from the first epoch's point with that point's ceilings, a run ends
    with the uninterrupted run's weights."""
    from core.models.loading import load_model

    tokenizer, forget = tiny_data
    method = get_method("ga")
    hparams = method.parse_hyperparameters(
        {
            "learning_rate": 1e-3,
            "epochs": 3,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            "match_holdout": True,
        }
    )

    def run(resume=None, ceilings=None):
        now = {"ceilings": ceilings}
        states = []

        def on_evaluation(point):
            # Every answer above the point's median is taken as matched.
            median = float(np.median(list(point.forget_nll.values())))
            now["ceilings"] = [median] * len(forget)
            if not states:  # the saved state is a snapshot; captured, it is live
                point.capture_state().save(tmp_path / "state")
            states.append(now["ceilings"])
            return False

        model, _ = load_model(str(tiny_demo.target), dtype="fp32")
        result = run_training(
            model,
            tokenizer,
            forget,
            None,
            method,
            hparams,
            seed=3,
            callbacks=Callbacks(
                on_evaluation=on_evaluation, forget_ceilings=lambda: now["ceilings"]
            ),
            resume=resume,
        )
        return {n: p.detach().clone() for n, p in result.model.named_parameters()}, states

    whole, states = run()
    state = TrainingState.load(tmp_path / "state")
    resumed, _ = run(resume=state, ceilings=states[0])
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7, msg=name)
    wrong, _ = run(resume=state, ceilings=None)  # without them the run differs
    assert any(not wrong[n].equal(v) for n, v in whole.items())
