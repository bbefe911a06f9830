"""Steering the sharpness-aware radius (``hyperparameters.sam_steer``): the rule against
values worked out by hand, the training loop's use of the radius it is given (as if the
job had set it), a resumed run taking up its point's radius, and a job on the tiny demo
whose points record the radius each trained with and whose events say every change."""

from __future__ import annotations

import pytest
import torch

from core.errors import InvalidRequest
from core.evaluation.verdict import relearning_check
from core.methods import get_method
from core.spec import parse_job_spec
from core.training.loop import Callbacks, run_training
from core.training.state import TrainingState
from core.verification import steer_sam_rho
from tests.fixtures.models import demo_job, recording_reporter

FAILED = relearning_check(0.44, 0.2)  # 2.2x the holdout's: fails (limit 2x)
PASSED = relearning_check(0.24, 0.2)  # 1.2x


@pytest.mark.parametrize(
    "rho, utility, relearning, expected",
    [
        (0.3, 0.97, FAILED, 0.45),  # 0.3 * 1.5
        (0.4, 0.97, FAILED, 0.6),  # 0.4 * 1.5
        (0.675, 0.97, FAILED, 0.9),  # 1.0125, capped at 3 x 0.3
        (0.9, 0.97, FAILED, 0.9),  # at the cap: no change
        (0.4, 0.955, FAILED, 0.6),  # near the floor, above it: relearning decides
        (0.4, 0.949, None, 0.266667),  # below the floor (no relearning check ran): 0.4 / 1.5
        (0.2, 0.90, None, 0.15),  # 0.2 / 1.5 = 0.133, floored at 0.5 x 0.3
        (0.3, 0.97, PASSED, 0.3),
        (0.3, None, None, 0.3),
    ],
)
def test_the_radius_moves_by_the_rule(rho, utility, relearning, expected):
    after, why = steer_sam_rho(
        rho, 0.3, utility_ratio=utility, utility_floor=0.95, relearning=relearning
    )
    assert after == pytest.approx(expected, abs=1e-6)
    assert (why is None) == (after == rho)


def test_steering_needs_a_target_and_starts_at_0_3_unless_told():
    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "simnpo",
        "hyperparameters": {"sam_steer": True},
    }
    assert parse_job_spec(spec).method_hyperparameters().sam_rho == 0.3
    told = {**spec, "hyperparameters": {"sam_steer": True, "sam_rho": 0.5}}
    assert parse_job_spec(told).method_hyperparameters().sam_rho == 0.5
    with pytest.raises(InvalidRequest) as refused:
        parse_job_spec({**spec, "target": None})
    assert refused.value.param == "hyperparameters.sam_steer"
    with pytest.raises(InvalidRequest) as refused:
        parse_job_spec({**spec, "resources": {"strategy": "fsdp"}})
    assert refused.value.code == "unsupported_strategy"


@pytest.fixture(scope="module")
def tiny_forget(tiny_encoded):
    tokenizer, forget, _ = tiny_encoded
    return tokenizer, forget


def _train(
    tiny_demo,
    tiny_forget,
    sam_rho,
    radius=None,
    *,
    epochs=2,
    resume=None,
    saved=None,
    new_schedule=False,
    on_point=None,
    events=None,
    **settings,
):
    """Gradient ascent with sharpness-aware steps on the tiny demo's forget10;
    ``radius(points_so_far)`` is the monitor's answer to ``Callbacks.sam_rho``;
    ``saved``: where the first point's state goes; ``on_point(point)`` sees every point
    and ``events`` collects the loop's events; ``settings``: more hyperparameters."""
    from core.models.loading import load_model

    tokenizer, forget = tiny_forget
    model, _ = load_model(str(tiny_demo.target), dtype="fp32")
    hparams = get_method("ga").parse_hyperparameters(
        {
            "learning_rate": 1e-3,
            "epochs": epochs,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
            "sam_rho": sam_rho,
            "sam_steer": radius is not None,
            **settings,
        }
    )
    points = [] if resume is None else [None]

    def on_evaluation(point):
        if saved is not None and not points:
            point.capture_state().save(saved)
        if on_point is not None:
            on_point(point)
        points.append(point.step)
        return False

    result = run_training(
        model,
        tokenizer,
        forget,
        None,
        get_method("ga"),
        hparams,
        seed=3,
        callbacks=Callbacks(
            on_evaluation=on_evaluation,
            sam_rho=None if radius is None else lambda: radius(len(points)),
            on_event=None if events is None else lambda *event: events.append(event),
        ),
        resume=resume,
        new_schedule=new_schedule,
    )
    return {n: p.detach().clone() for n, p in result.model.named_parameters()}


def _same(a, b) -> bool:
    return all(a[name].equal(value) for name, value in b.items())


def test_the_loop_trains_with_the_radius_it_is_given(tiny_demo, tiny_forget):
    as_set = _train(tiny_demo, tiny_forget, 0.2)
    assert _same(_train(tiny_demo, tiny_forget, 0.05, lambda _: 0.2), as_set)
    assert _same(_train(tiny_demo, tiny_forget, 0.2, lambda _: None), as_set)
    # The second epoch's steps take the radius the first epoch's point left.
    steered = _train(tiny_demo, tiny_forget, 0.05, lambda points: 0.05 if points == 0 else 0.2)
    assert not _same(steered, as_set)
    assert not _same(steered, _train(tiny_demo, tiny_forget, 0.05))


def test_a_resumed_run_takes_up_the_radius_of_its_point(tiny_demo, tiny_forget, tmp_path):
    """The radius lives in the monitor's saved state: resumed at the first epoch's point
    with that point's radius, a run ends with the uninterrupted run's weights."""

    def radius(points):
        return [0.05, 0.2, 0.1, 0.1][points]  # also asked after the last point

    whole = _train(tiny_demo, tiny_forget, 0.05, radius, epochs=3, saved=tmp_path / "state")
    state = TrainingState.load(tmp_path / "state")
    resumed = _train(tiny_demo, tiny_forget, 0.05, radius, epochs=3, resume=state)
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_a_steered_job_records_its_radius_at_every_point(tiny_demo, tmp_path):
    """The tiny demo at a hand-set rate fast enough to reach verdict probes: each point
    records the radius its steps took, each verdict probe moves it by the rule (checked
    above), a move is followed by a verdict probe, and every change is an event."""
    from core.evaluation.verdict import Check
    from core.pipeline import run_job

    spec, inputs = demo_job(
        tiny_demo,
        hyperparameters={"learning_rate": 0.01, "sam_rho": 0.3, "sam_steer": True},
        target={"utility_floor": 0.5, "max_epochs": 10},
    )
    events = recording_reporter()
    outcome = run_job(spec, inputs, tmp_path / "job", reporter=events)
    points = outcome.report["trajectory"]
    radii = [point["metrics"]["sam_rho"] for point in points]
    assert radii[0] == 0.3
    expected, changes, probe_next = [0.3], [], False
    for point in points:
        figures = point["metrics"]
        # a move that did not meet the target brings the next verdict probe forward
        assert not probe_next or figures["measured_by"] == "verdict probe"
        probe_next = False
        if figures["measured_by"] != "verdict probe":
            expected.append(expected[-1])
            continue
        checks = {c["name"]: Check(**c) for c in point["verdict"]["checks"]}
        after, why = steer_sam_rho(
            expected[-1],
            0.3,
            utility_ratio=figures.get("utility_ratio"),
            utility_floor=0.5,
            relearning=checks.get("relearning"),
        )
        expected.append(after)
        if why:
            changes.append(after)
            probe_next = point["verdict"]["status"] != "forgotten"
    assert radii == expected[: len(radii)]
    assert changes and [data["sam_rho"] for _, data in events.of("steer")] == changes
    # the report's trajectory figure shows the radius, and its caption says so
    assert (
        "radius the evaluation points steered" in (outcome.report_dir / "report.html").read_text()
    )


def test_sharpness_aware_steps_begin_at_sam_from(tiny_demo, tiny_forget):
    """``sam_from`` 0.5 of two epochs: the first epoch's steps are plain ones (the same
    weights as without ``sam_rho``), the second's sharpness-aware, and each point says
    which its steps were."""

    def train(sam_rho, sam_from=0.0):
        points, events = [], []

        def on_point(point):
            weights = {n: p.detach().clone() for n, p in point.model.named_parameters()}
            points.append((point.step, point.sharpness_aware, weights))

        _train(tiny_demo, tiny_forget, sam_rho, on_point=on_point, events=events, sam_from=sam_from)
        return points, events

    plain, _ = train(0.0)
    from_start, _ = train(0.2)
    later, events = train(0.2, sam_from=0.5)
    assert [p[1] for p in plain] == [False, False]
    assert [p[1] for p in from_start] == [True, True]
    assert [p[1] for p in later] == [False, True]
    assert _same(later[0][2], plain[0][2])
    assert not _same(later[1][2], plain[1][2]) and not _same(later[1][2], from_start[1][2])
    half = later[0][0]
    assert [data["step"] for kind, message, data in events if "sharpness-aware" in message] == [
        half
    ]


def test_a_job_steers_the_radius_only_once_sharpness_aware_steps_began(tiny_demo, tmp_path):
    from core.pipeline import run_job

    spec, inputs = demo_job(
        tiny_demo,
        hyperparameters={
            "learning_rate": 0.01,
            "sam_rho": 0.3,
            "sam_steer": True,
            "sam_from": 0.5,
        },
        target={"utility_floor": 0.5, "max_epochs": 6},
    )
    events = recording_reporter()
    outcome = run_job(spec, inputs, tmp_path / "job", reporter=events)
    points = outcome.report["trajectory"]
    total = points[0]["step"] * 6  # one point per epoch of the six
    radii = {point["step"]: point["metrics"]["sam_rho"] for point in points}
    assert all(radius == 0.0 for step, radius in radii.items() if step <= total // 2)
    assert all(radius > 0 for step, radius in radii.items() if step > total // 2)
    assert all(data["step"] > total // 2 for _, data in events.of("steer"))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # warming up over the first phase's 16 steps
        (8, 0.5),
        (16, 1.0),  # (160 - 16) / 144
        (159, 1 / 144),  # the plain phase's last step: almost zero
        (160, 80 / 216),  # (240 - 160) / (240 - 24): the whole budget's line, where it stands
        (239, 1 / 216),
    ],
)
def test_the_two_phase_schedule_by_hand(step, expected):
    from core.training.loop import two_phase_rate

    rate = two_phase_rate(step, start=160, warmup_first=16, total=240, warmup=24)
    assert rate == pytest.approx(expected)


def test_one_two_phase_job_trains_as_a_job_continued_with_sharpness_aware_epochs(
    tiny_demo, tiny_forget, tmp_path
):
    """``sam_from`` 0.5 with ``lr_scheduler: two_phase`` over two epochs ends with the
    weights of a one-epoch job without ``sam_rho`` continued to two epochs with it (the
    service's continue_from: the saved state, a new schedule)."""
    one_job = _train(tiny_demo, tiny_forget, 0.2, sam_from=0.5, lr_scheduler="two_phase")
    _train(tiny_demo, tiny_forget, 0.0, epochs=1, saved=tmp_path / "state")
    continued = _train(
        tiny_demo,
        tiny_forget,
        0.2,
        resume=TrainingState.load(tmp_path / "state"),
        new_schedule=True,
    )
    for name, value in one_job.items():
        torch.testing.assert_close(continued[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # and it is not the plain linear schedule's run
    assert not _same(_train(tiny_demo, tiny_forget, 0.2, sam_from=0.5), one_job)


def test_sam_froms_step_is_a_point_and_a_first_jobs_last_point(tiny_demo, tiny_forget, tmp_path):
    """The plain phase's end is an evaluation point even off an epoch's end, and the
    monitor probes it whatever its light figures say, as it does a first job's last
    point (``sam_from`` + ``two_phase`` then runs as a first job and its continuation)."""
    from core.pipeline import run_job
    from core.verification import GATE_AUC

    seen = []
    _train(
        tiny_demo,
        tiny_forget,
        0.2,
        sam_from=0.3,
        on_point=lambda point: seen.append((point.step, point.phase_end)),
    )
    steps_per_epoch = seen[-1][0] // 2
    start = round(0.3 * 2 * steps_per_epoch)
    assert start % steps_per_epoch  # off an epoch's end
    assert seen == sorted([(start, True), (steps_per_epoch, False), (2 * steps_per_epoch, False)])

    spec, inputs = demo_job(
        tiny_demo,
        hyperparameters={"sam_rho": 0.3, "sam_from": 0.2, "lr_scheduler": "two_phase"},
        target={"max_epochs": 5},
    )
    outcome = run_job(spec, inputs, tmp_path / "job", reporter=recording_reporter())
    first = outcome.report["trajectory"][0]
    assert first["metrics"]["measured_by"] == "verdict probe"
    assert first["metrics"]["membership_auc"] > GATE_AUC  # the light gate would have waited
