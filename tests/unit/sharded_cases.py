"""The checks that FSDP (``test_fsdp``) and DeepSpeed ZeRO-3 (``test_deepspeed``) share:
one job in two sharded processes (gloo, on CPU) gives what one process gives at the same
effective batch, for full fine-tuning and LoRA and every registered method but
sharpness-aware steps (the scenarios of ``test_distributed``), with a last block smaller
than the process count. Rank 0 alone evaluates, on a whole copy; the training state it
saves (at an evaluation point or a pause) is the one a single process saves, and a run
resumes from it under either strategy. ``obliviate unlearn --num-processes 2 --strategy
STRATEGY`` publishes the one-process checkpoint.

A module that imports these tests (and ``two_processes``) defines a module-scoped
``strategy`` fixture naming the strategy ("fsdp" or "deepspeed"); pytest does not
collect this file by itself. All two-process runs of a strategy happen in one spawn
(one process group); the one-process references run in the test process.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from core.errors import InvalidRequest, Paused
from core.training import distributed
from core.training.loop import Callbacks
from core.training.state import trainable_weights
from tests.unit import test_distributed as ddp
from tests.unit.test_distributed import (
    ONE_PROCESS,
    TWO_PROCESSES,
    _scenarios,
    _train,
    two_devices,
)

#: what a strategy's test module imports (``from tests.unit.sharded_cases import *``):
#: the shared tests and the fixture they read
__all__ = [
    "test_a_nan_on_one_rank_stops_every_sharded_rank",
    "test_a_pause_when_sharded_saves_the_evaluation_point_state",
    "test_cli_sharded_run_publishes_the_one_process_checkpoint",
    "test_sharded_evaluation_points_and_saved_states_are_the_single_process_ones",
    "test_sharpness_aware_steps_are_refused_on_every_sharded_rank",
    "test_two_sharded_processes_train_as_one",
    "two_processes",
]


def _train_sharded(strategy, method_name, lora, overrides, batch, accumulation, **kw):
    """``_train`` under ``strategy``. Only rank 0 holds whole weights: the others' model
    is sharded (FSDP: reading it would wait for rank 0 in an all-gather; ZeRO-3: its
    parameters are empty placeholders), so they report none."""
    real = ddp.trainable_weights
    if distributed.rank() != 0:
        ddp.trainable_weights = lambda model: {"none": torch.zeros(0)}
    try:
        return _train(method_name, lora, overrides, batch, accumulation, strategy=strategy, **kw)
    finally:
        ddp.trainable_weights = real


def sharded_scenarios():
    """The DDP comparisons that the sharded strategies run too: all but sharpness-aware
    steps, which they refuse (their move needs the whole gradient's norm), and methods
    that train part of the model (RMU), which they refuse too."""
    from core.methods import METHODS

    return [s for s in _scenarios() if "sam_rho" not in s[3] and METHODS[s[1]].trainable is None]


#: evaluation points and saved states: GA, full and LoRA, at batch 4 (8 in one process)
CAPTURED = [("ga", False), ("ga", True)]


def capture_at_step_2(record: dict):
    def on_evaluation(point):
        record.setdefault("calls", []).append(point.step)
        if point.step == 2:
            # a copy: the live optimizer's tensors go on changing (the pipeline saves
            # the state at once)
            record["state"] = copy.deepcopy(point.capture_state())
            # the point's model is whole (no DTensor) and trains as the loop's weights
            record["point_weights"] = torch.cat(
                [w.flatten() for w in trainable_weights(point.model).values()]
            )
        return False

    return Callbacks(on_evaluation=on_evaluation)


def _rank_main(rank: int, world: int, port: int, out_dir: str, strategy: str) -> None:
    ddp.rank_environment(rank, world, port)
    if strategy == "deepspeed":
        from core.training import zero3

        # Below DeepSpeed's default threshold every weight of the toy model would stay
        # whole on every rank: partition them all, as a real model's are.
        zero3.PARAM_PERSISTENCE_THRESHOLD = 0
    distributed.init_process_group()

    def train(*args, **kw):
        return _train_sharded(strategy, *args, **kw)

    results = ddp.scenario_results(train, sharded_scenarios())
    try:
        train("simnpo", False, {"sam_rho": 0.05}, 4, 1)
        results["sam"] = None
    except InvalidRequest as error:
        results["sam"] = (error.code, error.param)
    for method, lora in CAPTURED:
        record: dict = {}
        trained = train(
            method, lora, {}, 4, 1, callbacks=capture_at_step_2(record), evaluate_every_steps=1
        )
        record["final"] = trained["weights"]
        # every rank resumes from rank 0's saved state, as from the run folder
        shared = [record.get("state")]
        torch.distributed.broadcast_object_list(shared, src=0)
        resume = copy.deepcopy(shared[0])  # loading shares its tensors, which then train on
        record["resumed"] = train(method, lora, {}, 4, 1, resume=resume)["weights"]
        results[("captured", method, lora)] = record
    asked = []

    def pause_before_step_3():
        asked.append(True)  # asked on rank 0 only, before every block
        return len(asked) == 3

    try:
        train("ga", False, {}, 4, 1, callbacks=Callbacks(should_pause=pause_before_step_3))
        results["paused"] = None
    except Paused as paused:
        results["paused"] = paused.state
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(strategy, tmp_path_factory):
    """Every rank's results of ``_rank_main`` under the importing module's strategy."""
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp(strategy)
    port = distributed.free_port()
    mp.spawn(_rank_main, args=(2, port, str(out_dir), strategy), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("batch,accumulation", TWO_PROCESSES)
@pytest.mark.parametrize("name,method,lora,overrides", sharded_scenarios())
@two_devices
def test_two_sharded_processes_train_as_one(
    two_processes, name, method, lora, overrides, batch, accumulation
):
    one = _train(method, lora, overrides, *ONE_PROCESS)
    rank0, rank1 = (results[(name, batch, accumulation)] for results in two_processes)
    assert one["steps"] == rank0["steps"] == rank1["steps"] == 4  # 2 epochs x blocks of 8, 1
    assert rank0["tokens"] == one["tokens"]  # summed over ranks, padding not counted
    for expected, got in zip(one["trace"], rank0["trace"]):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert rank1["trace"] == rank0["trace"]  # step metrics are reduced over ranks
    assert rank0["weights"].shape == one["weights"].shape  # gathered whole on rank 0
    if overrides.get("retain_loss") == "kl":
        return  # AdamW turns the KL's step-1 kernel noise into updates (test_training)
    torch.testing.assert_close(rank0["weights"], one["weights"], rtol=1e-4, atol=1e-4)


@two_devices
def test_a_nan_on_one_rank_stops_every_sharded_rank(two_processes):
    for results in two_processes:
        code, message = results["nan"]
        assert code == "non_finite_loss"
        assert "on rank 1" in message


@pytest.mark.parametrize("method,lora", CAPTURED)
@two_devices
def test_sharded_evaluation_points_and_saved_states_are_the_single_process_ones(
    two_processes, method, lora, tmp_path
):
    from core.training.state import TrainingState

    mine, theirs = (results[("captured", method, lora)] for results in two_processes)
    assert mine["calls"] == [1, 2, 3, 4] and "calls" not in theirs  # rank 0 alone evaluates
    record: dict = {}
    one = _train(
        method,
        lora,
        {},
        *ONE_PROCESS,
        callbacks=capture_at_step_2(record),
        evaluate_every_steps=1,
    )
    expected, got = record["state"], mine["state"]
    torch.testing.assert_close(mine["point_weights"], record["point_weights"], rtol=1e-4, atol=1e-4)
    assert got.weights.keys() == expected.weights.keys()
    for key, value in expected.weights.items():
        torch.testing.assert_close(got.weights[key], value, rtol=1e-4, atol=1e-4)
    # the optimizer state in Optimizer.state_dict's own format, keyed by parameter index
    assert got.optimizer["param_groups"] == expected.optimizer["param_groups"]
    assert got.optimizer["state"].keys() == expected.optimizer["state"].keys()
    for index, moments in expected.optimizer["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(
                got.optimizer["state"][index][key], value, atol=1e-4, rtol=1e-3
            )
    assert (got.step, got.epoch, got.block_start, got.tokens) == (
        expected.step,
        expected.epoch,
        expected.block_start,
        expected.tokens,
    )
    # it goes through the run folder, and resumes under either strategy to the same end
    got.save(tmp_path)
    resumed_here = _train(method, lora, {}, *ONE_PROCESS, resume=TrainingState.load(tmp_path))
    for weights in (mine["final"], mine["resumed"], resumed_here["weights"]):
        torch.testing.assert_close(weights, one["weights"], rtol=1e-4, atol=1e-4)


@two_devices
def test_a_pause_when_sharded_saves_the_evaluation_point_state(two_processes):
    """Paused before step 3 (every rank gathers): the state an evaluation point after
    step 2 saves."""
    rank0, rank1 = two_processes
    paused, captured = rank0["paused"], rank0[("captured", "ga", False)]["state"]
    assert rank1["paused"] is not None  # every rank stops
    assert (paused.step, paused.epoch, paused.block_start) == (2, 1, 0)
    assert (captured.step, captured.epoch, captured.block_start) == (2, 1, 0)
    for key, value in captured.weights.items():
        torch.testing.assert_close(paused.weights[key], value, rtol=0, atol=0)
    assert paused.optimizer["param_groups"] == captured.optimizer["param_groups"]
    for index, moments in captured.optimizer["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(paused.optimizer["state"][index][key], value)


@two_devices
def test_sharpness_aware_steps_are_refused_on_every_sharded_rank(two_processes):
    for results in two_processes:
        assert results["sam"] == ("unsupported_strategy", "hyperparameters.sam_rho")


@two_devices
@pytest.mark.slow
def test_cli_sharded_run_publishes_the_one_process_checkpoint(strategy, home, tmp_path):
    """``obliviate unlearn --num-processes 2 --strategy STRATEGY``: rank 0 evaluates on
    the gathered weights and publishes a checkpoint transformers loads, with the weights
    of one process at batch 8."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, one_rows = ddp._cli_unlearn(tmp_path, "one", 8)
    two_out, two_rows = ddp._cli_unlearn(
        tmp_path, "two", 4, "--num-processes", "2", "--strategy", strategy
    )
    one_steps = [r for r in one_rows if r.get("type") != "evaluation"]
    two_steps = [r for r in two_rows if r.get("type") != "evaluation"]
    assert len(two_steps) == len(one_steps) == 2
    for a, b in zip(one_steps, two_steps):
        assert b["values"]["loss"] == pytest.approx(a["values"]["loss"], rel=1e-4)
    assert [r["step"] for r in two_rows if r.get("type") == "evaluation"] == [2]
    assert (two_out / "report" / "report.json").exists()
    one_weights = load_file(tmp_path / "one" / "checkpoint" / "model.safetensors")
    two_weights = load_file(two_out / "checkpoint" / "model.safetensors")
    assert two_weights.keys() == one_weights.keys()
    for key, value in one_weights.items():
        assert two_weights[key].dtype == value.dtype
        torch.testing.assert_close(two_weights[key], value, rtol=1e-4, atol=1e-4)
    model = AutoModelForCausalLM.from_pretrained(two_out / "checkpoint")
    assert sum(p.numel() for p in model.parameters()) > 0
