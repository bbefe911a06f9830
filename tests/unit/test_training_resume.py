"""Evaluation points and resumable state: a run stopped at a point (or paused between
steps) and resumed from its saved state ends with the weights of a run never stopped."""

from __future__ import annotations

import pytest
import torch

from core.errors import Paused
from core.methods import get_method
from core.spec import LoraSpec
from core.training.loop import Callbacks, run_training
from core.training.state import TrainingState


@pytest.fixture(scope="module")
def tiny_data(tiny_encoded):
    return tiny_encoded


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _run(
    tiny_demo,
    tiny_data,
    method,
    *,
    lora=None,
    callbacks=None,
    resume=None,
    every=None,
    epochs=3,
    learning_rate=1e-3,
    new_schedule=False,
):
    from core.models.loading import load_model

    tokenizer, forget, retain = tiny_data
    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    hparams = get_method(method).parse_hyperparameters(
        {
            "learning_rate": learning_rate,
            "epochs": epochs,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            **({"retain_loss": "kl"} if method == "simnpo" else {}),
        }
    )
    return run_training(
        model,
        tokenizer,
        forget,
        retain,
        get_method(method),
        hparams,
        seed=3,
        lora=lora,
        callbacks=callbacks,
        evaluate_every_steps=every,
        resume=resume,
        new_schedule=new_schedule,
    )


def test_evaluation_points_fall_at_epoch_ends_and_the_last_step(tiny_demo, tiny_data):
    seen = []

    def on_evaluation(point):
        seen.append((point.step, round(point.epoch, 6), point.final))
        return False

    result = _run(tiny_demo, tiny_data, "npo", callbacks=Callbacks(on_evaluation=on_evaluation))
    # 16 forget examples, blocks of 4: 4 steps per epoch, 3 epochs.
    assert seen == [(4, 1.0, False), (8, 2.0, False), (12, 3.0, True)]
    assert result.steps == 12 and not result.stopped_early


def test_every_n_steps_and_stopping_at_a_point(tiny_demo, tiny_data):
    seen = []

    def on_evaluation(point):
        seen.append(point.step)
        return point.step == 6

    result = _run(
        tiny_demo, tiny_data, "simnpo", callbacks=Callbacks(on_evaluation=on_evaluation), every=3
    )
    assert seen == [3, 6]
    assert result.steps == 6 and result.stopped_early
    assert len(result.history) == 6


@pytest.mark.parametrize(
    "method,lora,stop_at",
    [
        ("npo", None, 4),  # at an epoch end
        ("simnpo", None, 6),  # mid-epoch, with KL retain and dropout
        # LoRA dropout draws from torch's global generator: resuming restores it too
        ("graddiff", LoraSpec(r=4, alpha=8, dropout=0.1), 5),
        # FILA rebuilds the same base weights from the original model on resume
        ("loku", LoraSpec(r=4, alpha=8, init="fila"), 5),
        # RMU rebuilds its control vector from the original weights and the seed, and
        # trains the layers before the steered one only
        ("rmu", None, 5),
    ],
)
def test_resuming_from_a_saved_state_gives_the_uninterrupted_weights(
    tiny_demo, tiny_data, tmp_path, method, lora, stop_at
):
    uninterrupted = _run(tiny_demo, tiny_data, method, lora=lora)

    saved = {}

    def on_evaluation(point):
        if point.step == stop_at:
            point.capture_state().save(tmp_path / "state")
            saved["step"] = point.step
            return True
        return False

    first = _run(
        tiny_demo,
        tiny_data,
        method,
        lora=lora,
        callbacks=Callbacks(on_evaluation=on_evaluation),
        every=1,
    )
    assert first.stopped_early and saved["step"] == stop_at
    state = TrainingState.load(tmp_path / "state")
    resumed = _run(tiny_demo, tiny_data, method, lora=lora, resume=state)

    assert resumed.steps == uninterrupted.steps
    assert [m.loss for m in resumed.history] == pytest.approx(
        [m.loss for m in uninterrupted.history], rel=1e-6
    )
    want, got = _weights(uninterrupted.model), _weights(resumed.model)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)


def test_a_pause_carries_the_state_to_resume_from(tiny_demo, tiny_data, tmp_path):
    uninterrupted = _run(tiny_demo, tiny_data, "npo")
    polls = []

    def should_pause():
        polls.append(1)
        return len(polls) == 7  # before the 7th step

    with pytest.raises(Paused) as paused:
        _run(tiny_demo, tiny_data, "npo", callbacks=Callbacks(should_pause=should_pause))
    state = paused.value.state
    assert state.step == 6 and state.epoch == 1 and state.block_start == 8
    state.save(tmp_path / "paused")
    resumed = _run(tiny_demo, tiny_data, "npo", resume=TrainingState.load(tmp_path / "paused"))
    for name, value in _weights(uninterrupted.model).items():
        torch.testing.assert_close(_weights(resumed.model)[name], value, rtol=1e-6, atol=1e-7)


def test_a_continued_job_keeps_what_was_decided_unless_it_sets_the_rate_by_hand():
    from core.spec import parse_job_spec
    from core.training.auto import restore_resolved

    saved = {
        "resolved": {"learning_rate": 3.1e-4, "gradient_accumulation_steps": 2},
        "decided": {"learning_rate": "auto: ...", "gradient_accumulation_steps": "auto: ..."},
    }

    def hparams(**values):
        spec = {"model": "m", "forget": "f", "retain": "r", "method": "simnpo"}
        spec["hyperparameters"] = values
        return parse_job_spec(spec).method_hyperparameters()

    resumed, decided = restore_resolved(hparams(), saved)
    assert (resumed.learning_rate, resumed.gradient_accumulation_steps) == (3.1e-4, 2)
    assert set(decided) == {"learning_rate", "gradient_accumulation_steps"}
    # a lower rate for the added epochs is honoured; the data position's accumulation not
    resumed, decided = restore_resolved(hparams(learning_rate=1e-4, sam_rho=0.1), saved)
    assert (resumed.learning_rate, resumed.gradient_accumulation_steps) == (1e-4, 2)
    assert resumed.sam_rho == 0.1 and set(decided) == {"gradient_accumulation_steps"}


def test_a_continuation_with_its_own_rate_trains_at_that_rate(tiny_demo, tiny_data, tmp_path):
    saved = {}

    def on_evaluation(point):
        if point.final:
            point.capture_state().save(tmp_path / "state")
            saved["step"] = point.step
        return False

    _run(tiny_demo, tiny_data, "npo", callbacks=Callbacks(on_evaluation=on_evaluation))
    same, lower = (
        _run(
            tiny_demo,
            tiny_data,
            "npo",
            resume=TrainingState.load(tmp_path / "state"),
            epochs=5,
            learning_rate=rate,
            new_schedule=True,
        )
        for rate in (1e-3, 5e-4)
    )
    added = [m for m in same.history if m.step > saved["step"]]
    added_lower = [m for m in lower.history if m.step > saved["step"]]
    assert added and len(added) == len(added_lower)
    # the same five-epoch schedule from the step reached, at half the base rate
    assert [m.lr / 2 for m in added] == pytest.approx([m.lr for m in added_lower])
    assert added[0].lr > 0
