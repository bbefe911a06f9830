"""RMU: its distances against values by hand, the layer rule, the control vector from the
original weights and the seed, and a run on the tiny demo that trains only the layers
before the steered one, steers the forget activations and holds the retain ones."""

from __future__ import annotations

import pytest
import torch

from core.errors import InvalidRequest
from core.methods import get_method
from core.methods.rmu import control_vector, squared_distance, steered_layer
from core.spec import parse_job_spec
from core.training.loop import run_training
from tests.fixtures.models import demo_job, recording_reporter


def _hparams(**values):
    return get_method("rmu").parse_hyperparameters(values)


def test_squared_distance_by_hand():
    states = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [9.0, 9.0]]])
    target = torch.tensor([1.0, 0.0])
    # real tokens 0 and 1: |(0, 2)|^2 = 4, |(2, 0)|^2 = 4; the padded third is ignored
    mask = torch.tensor([[1, 1, 0]])
    assert squared_distance(states, target, mask).tolist() == [4.0]
    other = torch.zeros(1, 3, 2)
    # (1 + 4 + 9) / 2 = 7 against the zero states
    assert squared_distance(states, other, mask).tolist() == [7.0]


@pytest.mark.parametrize(("n_layers", "expected"), [(2, 1), (4, 2), (32, 9), (60, 16)])
def test_auto_layer_is_a_quarter_of_the_depth_plus_one(n_layers, expected):
    assert steered_layer(_hparams(), n_layers) == expected


def test_a_layer_outside_the_model_names_the_field():
    with pytest.raises(InvalidRequest) as caught:
        steered_layer(_hparams(layer=4), 4)
    assert caught.value.param == "hyperparameters.layer"
    assert "from 1 to 3" in str(caught.value)


def test_defaults_are_rmus():
    hp = _hparams()
    assert (hp.retain_loss, hp.retain_coeff, hp.lr_scheduler, hp.warmup_ratio) == (
        "activations",
        100.0,
        "constant",
        0.0,
    )


def test_sharded_strategies_are_refused_at_submission(tiny_demo):
    with pytest.raises(InvalidRequest) as caught:
        parse_job_spec(
            {
                "model": str(tiny_demo.target),
                "forget": str(tiny_demo.data["forget10"]),
                "retain": str(tiny_demo.data["retain90"]),
                "method": "rmu",
                "resources": {"gpus": 2, "strategy": "fsdp"},
            }
        ).validated()
    assert (caught.value.code, caught.value.param) == ("unsupported_strategy", "resources.strategy")


def _model(tiny_demo):
    from core.models.loading import load_model

    return load_model(str(tiny_demo.target), dtype="fp32")[0]


def _states(model, examples, layer):
    from core.data.encoding import collate

    batch = collate(examples, 0)
    with torch.no_grad():
        states = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        ).hidden_states[layer]
    return states, batch["attention_mask"]


def test_control_vector_is_the_seeds_direction_at_the_mean_norm_times_the_coefficient(
    tiny_demo, tiny_encoded
):
    _, forget, _ = tiny_encoded
    model = _model(tiny_demo)
    hp = _hparams(steering_coeff=2.0)
    control = control_vector(model, forget, 0, hp, seed=5, device=torch.device("cpu"))
    # the tiny demo has 2 layers: the auto layer is 1
    states, mask = _states(model, forget, 1)
    mean_norm = states.norm(dim=-1)[mask.bool()].mean()
    assert float(control.norm()) == pytest.approx(2.0 * float(mean_norm), rel=1e-5)
    direction = torch.rand(control.shape[0], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(control / control.norm(), direction / direction.norm())
    again = control_vector(model, forget, 0, hp, seed=5, device=torch.device("cpu"))
    torch.testing.assert_close(again, control)


def test_a_run_trains_the_lower_layers_steers_forget_and_holds_retain(tiny_demo, tiny_encoded):
    tokenizer, forget, retain = tiny_encoded
    original = _model(tiny_demo)
    hp = _hparams(
        learning_rate=3e-3, epochs=10, batch_size=4, gradient_accumulation_steps=1, precision="fp32"
    )
    result = run_training(
        _model(tiny_demo), tokenizer, forget, retain, get_method("rmu"), hp, seed=3
    )
    trained = result.model
    before = dict(original.named_parameters())
    changed = {
        name
        for name, parameter in trained.named_parameters()
        if not torch.equal(parameter.detach(), before[name].detach())
    }
    # layer 1 is steered: only layer 0 trains (not the embeddings, not layer 1, not the head)
    blocks = next(n for n, m in original.named_modules() if isinstance(m, torch.nn.ModuleList))
    assert changed and all(name.startswith(f"{blocks}.0.") for name in changed)
    control = control_vector(original, forget, 0, hp, seed=3, device=torch.device("cpu"))
    forget_before = squared_distance(*_swap(_states(original, forget, 1), control)).mean()
    forget_after = squared_distance(*_swap(_states(trained, forget, 1), control)).mean()
    assert float(forget_after) < 0.5 * float(forget_before)
    # the retain activations stay much nearer the original's than the forget ones moved
    reference, mask = _states(original, retain, 1)
    now, _ = _states(trained, retain, 1)
    forget_states, forget_mask = _states(original, forget, 1)
    forget_moved = squared_distance(_states(trained, forget, 1)[0], forget_states, forget_mask)
    assert float(squared_distance(now, reference, mask).mean()) < 0.1 * float(forget_moved.mean())


def _swap(states_and_mask, control):
    states, mask = states_and_mask
    return states, control, mask


def test_matching_follows_the_target_unless_set():
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "rmu",
    }
    assert parse_job_spec(spec).method_hyperparameters().match_holdout is True
    assert parse_job_spec({**spec, "target": None}).method_hyperparameters().match_holdout is False
    chosen = {**spec, "hyperparameters": {"match_holdout": False}}
    assert parse_job_spec(chosen).method_hyperparameters().match_holdout is False


def test_a_job_with_no_hyperparameters_runs_matched_and_publishes(tiny_demo, tmp_path):
    """The whole pipeline: the control vector, the frozen reference's activations, the
    ceilings from the evaluation points, a verdict and a published model."""
    from core.pipeline import run_job

    spec, inputs = demo_job(tiny_demo, method="rmu", target={"max_epochs": 3})
    recorder = recording_reporter()
    outcome = run_job(spec, inputs, tmp_path / "job", reporter=recorder)
    assert outcome.manifest["hyperparameters"]["match_holdout"] is True
    assert outcome.manifest["hyperparameters"]["retain_loss"] == "activations"
    summary = outcome.report["summary"]
    assert isinstance(summary["target_met"], bool) and summary["verdict"]["status"]
    assert recorder.points, "evaluation points were measured"
    assert (tmp_path / "job" / "checkpoint").exists()
