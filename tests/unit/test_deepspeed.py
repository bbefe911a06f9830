"""One job in two DeepSpeed ZeRO-3 processes (gloo, on CPU) gives what one process gives
at the same effective batch: the same loss trace and final weights, for full
fine-tuning and LoRA and every registered method (the scenarios of ``test_fsdp``), with
a last block smaller than the process count. Rank 0 alone evaluates, on an unpartitioned
copy; the training state it saves (at an evaluation point or a pause) is the one a
single process saves, and a run resumes from it under either strategy.
``obliviate unlearn --num-processes 2 --strategy deepspeed`` publishes the one-process
checkpoint.

Skipped where deepspeed is not installed (it is the ``deepspeed`` extra, which ``dev``
pulls in). All two-process runs happen in one spawn; the one-process references run
here.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip("deepspeed")

from core.errors import InvalidRequest, NonFiniteLoss, Paused  # noqa: E402
from core.training import distributed, zero3  # noqa: E402
from core.training.loop import Callbacks  # noqa: E402
from tests.unit import test_distributed as ddp  # noqa: E402
from tests.unit.test_distributed import (  # noqa: E402
    NAN_ON_RANK_1,
    ONE_PROCESS,
    TWO_PROCESSES,
    _train,
    two_devices,
)
from tests.unit.test_fsdp import CAPTURED, _capture_at_step_2, _fsdp_scenarios  # noqa: E402


def _train_zero3(method_name, lora, overrides, batch, accumulation, **kw):
    """``_train`` under ZeRO-3. Only rank 0 holds whole weights: the others' model is
    partitioned (its parameters are empty placeholders), so they report none."""
    real = ddp.trainable_weights
    if distributed.rank() != 0:
        ddp.trainable_weights = lambda model: {"none": torch.zeros(0)}
    try:
        return _train(method_name, lora, overrides, batch, accumulation, strategy="deepspeed", **kw)
    finally:
        ddp.trainable_weights = real


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    # Below DeepSpeed's default threshold every weight of the toy model would stay whole
    # on every rank: partition them all, as a real model's are.
    zero3.PARAM_PERSISTENCE_THRESHOLD = 0
    distributed.init_process_group()
    results: dict = {}
    for name, method, lora, overrides in _fsdp_scenarios():
        for batch, accumulation in TWO_PROCESSES:
            results[(name, batch, accumulation)] = _train_zero3(
                method, lora, overrides, batch, accumulation
            )
    try:
        _train_zero3("ga", False, {}, 4, 1, method=NAN_ON_RANK_1)
        results["nan"] = None
    except NonFiniteLoss as error:
        results["nan"] = (error.code, error.message)
    try:
        _train_zero3("simnpo", False, {"sam_rho": 0.05}, 4, 1)
        results["sam"] = None
    except InvalidRequest as error:
        results["sam"] = (error.code, error.param)
    for method, lora in CAPTURED:
        record: dict = {}
        trained = _train_zero3(
            method,
            lora,
            {},
            4,
            1,
            callbacks=_capture_at_step_2(record),
            evaluate_every_steps=1,
        )
        record["final"] = trained["weights"]
        # every rank resumes from rank 0's saved state, as from the run folder
        shared = [record.get("state")]
        torch.distributed.broadcast_object_list(shared, src=0)
        resume = copy.deepcopy(shared[0])
        record["resumed"] = _train_zero3(method, lora, {}, 4, 1, resume=resume)["weights"]
        results[("captured", method, lora)] = record
    asked = []

    def pause_before_step_3():
        asked.append(True)  # asked on rank 0 only, before every block
        return len(asked) == 3

    try:
        _train_zero3("ga", False, {}, 4, 1, callbacks=Callbacks(should_pause=pause_before_step_3))
        results["paused"] = None
    except Paused as paused:
        results["paused"] = paused.state
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("zero3")
    mp.spawn(_rank_main, args=(2, distributed.free_port(), str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("batch,accumulation", TWO_PROCESSES)
@pytest.mark.parametrize("name,method,lora,overrides", _fsdp_scenarios())
@two_devices
def test_two_zero3_processes_train_as_one(
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
def test_a_nan_on_one_rank_stops_every_zero3_rank(two_processes):
    for results in two_processes:
        code, message = results["nan"]
        assert code == "non_finite_loss"
        assert "on rank 1" in message


@pytest.mark.parametrize("method,lora", CAPTURED)
@two_devices
def test_zero3_evaluation_points_and_saved_states_are_the_single_process_ones(
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
        callbacks=_capture_at_step_2(record),
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
def test_a_pause_under_zero3_saves_the_evaluation_point_state(two_processes):
    """Paused before step 3 (every rank gathers): the state an evaluation point after
    step 2 saves."""
    rank0, rank1 = two_processes
    paused, captured = rank0["paused"], rank0[("captured", "ga", False)]["state"]
    assert rank1["paused"] is not None  # every rank stops
    assert (paused.step, paused.epoch, paused.block_start) == (2, 1, 0)
    for key, value in captured.weights.items():
        torch.testing.assert_close(paused.weights[key], value, rtol=0, atol=0)
    assert paused.optimizer["param_groups"] == captured.optimizer["param_groups"]
    for index, moments in captured.optimizer["state"].items():
        for key, value in moments.items():
            torch.testing.assert_close(paused.optimizer["state"][index][key], value)


@two_devices
def test_sharpness_aware_steps_are_refused_on_every_zero3_rank(two_processes):
    for results in two_processes:
        assert results["sam"] == ("unsupported_strategy", "hyperparameters.sam_rho")


@two_devices
@pytest.mark.slow
def test_cli_deepspeed_publishes_the_one_process_checkpoint(home, tmp_path):
    """``obliviate unlearn --num-processes 2 --strategy deepspeed``: rank 0 evaluates on
    the gathered weights and publishes a checkpoint transformers loads, with the weights
    of one process at batch 8."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, one_rows = ddp._cli_unlearn(tmp_path, "one", 8)
    two_out, two_rows = ddp._cli_unlearn(
        tmp_path, "two", 4, "--num-processes", "2", "--strategy", "deepspeed"
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


@two_devices
@pytest.mark.slow
def test_an_accelerate_deepspeed_launch_runs_the_job_under_zero3(home, tmp_path):
    """``accelerate launch --use_deepspeed --zero_stage 3 -m cli.main unlearn``: the job
    (its spec names no strategy) runs under the engine's ZeRO-3 and publishes the
    one-process checkpoint."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from safetensors.torch import load_file

    ddp._cli_unlearn(tmp_path, "one", 8)
    spec = yaml.safe_load((tmp_path / "one.yaml").read_text())
    spec["hyperparameters"]["batch_size"] = 4
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(spec))
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--use_deepspeed", "--zero_stage", "3", "--num_processes", "2"),
        *("--num_machines", "1", "--main_process_port", str(distributed.free_port())),
        *("-m", "cli.main", "unlearn", str(tmp_path / "two.yaml"), "-o", str(tmp_path / "two")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=Path.cwd(), env=env, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = (tmp_path / "two" / "events.jsonl").read_text().splitlines()
    training = [e for e in map(json.loads, events) if e["message"] == "training"]
    assert training[0]["data"]["strategy"] == "deepspeed"
    assert training[0]["data"]["processes"] == 2
    one = load_file(tmp_path / "one" / "checkpoint" / "model.safetensors")
    two = load_file(tmp_path / "two" / "checkpoint" / "model.safetensors")
    assert two.keys() == one.keys()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-4)


home = ddp.home
