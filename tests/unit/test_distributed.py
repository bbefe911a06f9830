"""One job in two processes (DDP over gloo, on CPU) gives what one process gives at the
same effective batch: the same loss trace and final weights, for full fine-tuning and
LoRA and every registered method, with a last block smaller than the process count
(one rank trains on padding only). A NaN on one rank stops both; rank 0's stop
decision at an evaluation point stops both.

All two-process runs happen in one spawn (one process group), so the file costs one
start of two interpreters; the one-process references run here.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
import torch

from core.data.encoding import IGNORE_INDEX, EncodedExample
from core.errors import NonFiniteLoss
from core.methods import METHODS
from core.methods.base import Method
from core.methods.ga import GAHyperparameters
from core.methods.ga import forget_term as ga_forget_term
from core.spec import LoraSpec
from core.training import distributed
from core.training.loop import Callbacks, run_training
from core.training.state import trainable_weights
from tests.fixtures.models import TINY_PRESET

#: Two ranks need two devices: gloo CPU processes, or two GPUs under nccl.
two_devices = pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="two ranks on one GPU: nccl needs a GPU per process",
)

#: 9 forget examples with blocks of 8: the second block has one example, so under two
#: processes rank 1 trains on a zero-weight padding copy there.
N_FORGET = 9
LORA = LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"])


class _Tokenizer:
    """Enough of a tokenizer for the loop: FLAT encodes its refusals with it (one id
    per character, inside the toy vocabulary)."""

    pad_token_id = 0
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + ord(char) % 45 for char in text]}


def _examples(n: int, seed: int) -> list[EncodedExample]:
    rng = random.Random(seed)
    examples = []
    for index in range(n):
        prompt = [1] + [rng.randrange(3, 48) for _ in range(rng.randint(2, 5))]
        answer = [rng.randrange(3, 48) for _ in range(rng.randint(2, 6))]
        examples.append(
            EncodedExample(
                input_ids=prompt + answer,
                labels=[IGNORE_INDEX] * len(prompt) + answer,
                record_index=index,
            )
        )
    return examples


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def _scenarios() -> list[tuple[str, str, bool, dict]]:
    """(name, method, lora, hyperparameters) of every compared run."""
    runs = []
    for method in sorted(METHODS):
        for lora in (False, True):
            runs.append((f"{method}-{'lora' if lora else 'full'}", method, lora, {}))
    # the KL retain term: a frozen copy (full) or the base with adapters off (LoRA)
    for lora in (False, True):
        runs.append((f"npo-kl-{'lora' if lora else 'full'}", "npo", lora, {"retain_loss": "kl"}))
    # RMU's own retain term: activations against a frozen copy (full) or the base (LoRA)
    for lora in (False, True):
        runs.append(
            (
                f"rmu-activations-{'lora' if lora else 'full'}",
                "rmu",
                lora,
                {"retain_loss": "activations"},
            )
        )
    # gradient checkpointing under DDP (LoRA needs its input-grad hook there)
    for lora in (False, True):
        runs.append(
            (
                f"simnpo-checkpointing-{'lora' if lora else 'full'}",
                "simnpo",
                lora,
                {"gradient_checkpointing": True},
            )
        )
    # sharpness-aware steps: the move uses the gradient after the sync, the same on
    # every rank, and the retain pass adds to the moved pass's synced gradient
    for lora in (False, True):
        runs.append((f"simnpo-sam-{'lora' if lora else 'full'}", "simnpo", lora, {"sam_rho": 0.05}))
    return runs


#: (batch size, accumulation) per process count, all at effective batch 8
ONE_PROCESS = (8, 1)
TWO_PROCESSES = [(4, 1), (2, 2)]


def _train(method_name, lora, overrides, batch, accumulation, method=None, callbacks=None, **kw):
    method = method or METHODS[method_name]
    hparams = method.parse_hyperparameters(
        {
            "learning_rate": 1e-3,
            "epochs": 2,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "retain_coeff": 1.0,
            "retain_loss": "nll",
            "batch_size": batch,
            "gradient_accumulation_steps": accumulation,
            **overrides,
        }
    )
    result = run_training(
        _model(),
        _Tokenizer(),
        _examples(N_FORGET, seed=1),
        _examples(12, seed=2),
        method,
        hparams,
        seed=3,
        lora=LORA if lora else None,
        callbacks=callbacks,
        **kw,
    )
    return {
        "trace": [(m.loss, m.forget_loss, m.retain_loss) for m in result.history],
        "tokens": result.trained_tokens,
        "steps": result.steps,
        "weights": torch.cat([w.flatten() for w in trainable_weights(result.model).values()]),
    }


def _nan_on_rank_1(inputs, hparams):
    term = ga_forget_term(inputs, hparams)
    if distributed.rank() == 1:
        term.per_sequence = term.per_sequence * float("nan")
    return term


NAN_ON_RANK_1 = Method(
    name="nan-on-rank-1",
    title="test",
    description="GA whose loss is NaN on rank 1",
    hyperparameters=GAHyperparameters,
    forget_term=_nan_on_rank_1,
)


def rank_environment(rank: int, world: int, port: int) -> None:
    """What a launcher gives rank ``rank`` of a one-machine job (one thread each)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )


def scenario_results(train, scenarios) -> dict:
    """Every scenario at every two-process batch split, and a NaN on rank 1 (its error's
    code and message), trained by ``train`` (the strategy's ``_train``)."""
    results: dict = {}
    for name, method, lora, overrides in scenarios:
        for batch, accumulation in TWO_PROCESSES:
            results[(name, batch, accumulation)] = train(
                method, lora, overrides, batch, accumulation
            )
    try:
        train("ga", False, {}, 4, 1, method=NAN_ON_RANK_1)
        results["nan"] = None
    except NonFiniteLoss as error:
        results["nan"] = (error.code, error.message)
    return results


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    rank_environment(rank, world, port)
    distributed.init_process_group()
    results = scenario_results(_train, _scenarios())
    calls = []

    def stop_at_step_2(point):
        calls.append(point.step)
        return point.step == 2

    stopped = _train(
        "ga",
        False,
        {},
        4,
        1,
        callbacks=Callbacks(on_evaluation=stop_at_step_2),
        evaluate_every_steps=1,
    )
    results["stop"] = (stopped["steps"], calls)
    # Only rank 0 has the monitor that sets the forget answers' ceilings.
    results["matched"] = _train(
        "ga",
        False,
        {"match_holdout": True},
        4,
        1,
        callbacks=Callbacks(forget_ceilings=_odd_ceilings if rank == 0 else None),
    )
    # ... and the one that steers the sharpness-aware radius.
    results["steered"] = _train(
        "simnpo",
        False,
        {"sam_rho": 0.05, "sam_steer": True},
        4,
        1,
        callbacks=Callbacks(sam_rho=(lambda: 0.2) if rank == 0 else None),
    )
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _odd_ceilings() -> list[float | None]:
    """Odd examples already past their ceilings (not pushed), even ones not measured."""
    return [-math.inf if i % 2 else None for i in range(N_FORGET)]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(2, distributed.free_port(), str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("batch,accumulation", TWO_PROCESSES)
@pytest.mark.parametrize("name,method,lora,overrides", _scenarios())
@two_devices
def test_two_processes_train_as_one(
    two_processes, name, method, lora, overrides, batch, accumulation
):
    one = _train(method, lora, overrides, *ONE_PROCESS)
    rank0, rank1 = (results[(name, batch, accumulation)] for results in two_processes)
    assert one["steps"] == rank0["steps"] == 4  # 2 epochs x blocks of 8 and 1
    assert rank0["tokens"] == one["tokens"]  # summed over ranks, padding not counted
    for expected, got in zip(one["trace"], rank0["trace"]):
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # DDP keeps the replicas identical
    torch.testing.assert_close(rank0["weights"], rank1["weights"], rtol=0, atol=1e-6)
    if overrides.get("retain_loss") == "kl":
        return  # AdamW turns the KL's step-1 kernel noise into updates (test_training)
    # AdamW's g / sqrt(v) amplifies summation-order noise where a gradient is ~0; an
    # error in pairing or normalization moves every weight by ~lr (1e-3).
    torch.testing.assert_close(rank0["weights"], one["weights"], rtol=1e-4, atol=1e-4)


@two_devices
def test_rank_0s_ceilings_hold_on_every_rank(two_processes):
    one = _train(
        "ga",
        False,
        {"match_holdout": True},
        *ONE_PROCESS,
        callbacks=Callbacks(forget_ceilings=_odd_ceilings),
    )
    free = _train("ga", False, {}, *ONE_PROCESS)
    rank0, rank1 = (results["matched"] for results in two_processes)
    assert not torch.equal(one["weights"], free["weights"])
    torch.testing.assert_close(rank0["weights"], rank1["weights"], rtol=0, atol=1e-6)
    torch.testing.assert_close(rank0["weights"], one["weights"], rtol=1e-4, atol=1e-4)


@two_devices
def test_rank_0s_radius_holds_on_every_rank(two_processes):
    steered = _train("simnpo", False, {"sam_rho": 0.2}, *ONE_PROCESS)
    unsteered = _train("simnpo", False, {"sam_rho": 0.05}, *ONE_PROCESS)
    rank0, rank1 = (results["steered"] for results in two_processes)
    assert not torch.equal(steered["weights"], unsteered["weights"])
    torch.testing.assert_close(rank0["weights"], rank1["weights"], rtol=0, atol=1e-6)
    torch.testing.assert_close(rank0["weights"], steered["weights"], rtol=1e-4, atol=1e-4)


@two_devices
def test_a_nan_on_one_rank_stops_every_rank(two_processes):
    for results in two_processes:
        code, message = results["nan"]
        assert code == "non_finite_loss"
        assert "on rank 1" in message


@two_devices
def test_rank_0_decides_at_evaluation_points_and_only_it_evaluates(two_processes):
    (steps0, calls0), (steps1, calls1) = (results["stop"] for results in two_processes)
    assert steps0 == steps1 == 2
    assert calls0 == [1, 2] and calls1 == []


def test_shard_block_pads_short_shares_with_zero_weight_copies():
    assert distributed.shard_block([5, 6, 7], 0, 2) == ([5, 7], [True, True])
    assert distributed.shard_block([5, 6, 7], 1, 2) == ([6, 5], [True, False])
    assert distributed.shard_block([5], 3, 4) == ([5], [False])
    assert distributed.shard_block([5, 6], 0, 1) == ([5, 6], [True, True])


@pytest.fixture
def home(tmp_path, tiny_demo, monkeypatch):
    import shutil

    from core.settings import get_settings

    home = tmp_path / "home"
    shutil.copytree(tiny_demo.root, home / "demo" / TINY_PRESET)
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    monkeypatch.setenv("OBLIVIATE_DEMO_PRESET", TINY_PRESET)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def _cli_unlearn(tmp_path, name, batch, *options):
    import json

    import yaml
    from typer.testing import CliRunner

    from cli.main import app

    spec = {
        "model": "demo-target",
        "forget": "ds_demo_forget10",
        "retain": "ds_demo_retain90",
        "method": "graddiff",
        "hyperparameters": {
            "learning_rate": 1e-3,
            "epochs": 1,
            "batch_size": batch,
            "gradient_accumulation_steps": 1,
            "precision": "fp32",
        },
        "evaluation": {"holdout": "ds_demo_holdout", "max_samples": 8, "max_new_tokens": 4},
        "target": {"max_epochs": 1},
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / name
    result = CliRunner().invoke(
        app, ["unlearn", str(tmp_path / f"{name}.yaml"), "-o", str(out), *options]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows


@two_devices
@pytest.mark.slow
def test_cli_num_processes_gives_the_one_process_result(home, tmp_path):
    """``obliviate unlearn --num-processes 2``: two gloo processes, rank 0 alone evaluates,
    reports and saves; the same losses and weights as one process at batch 8."""
    from safetensors.torch import load_file

    one_out, one_rows = _cli_unlearn(tmp_path, "one", 8)
    two_out, two_rows = _cli_unlearn(tmp_path, "two", 4, "--num-processes", "2")
    one_steps = [r for r in one_rows if r.get("type") != "evaluation"]
    two_steps = [r for r in two_rows if r.get("type") != "evaluation"]
    assert len(two_steps) == len(one_steps) == 2  # 16 forget examples, blocks of 8
    for a, b in zip(one_steps, two_steps):
        assert b["values"]["loss"] == pytest.approx(a["values"]["loss"], rel=1e-4)
        assert b["values"]["tokens"] == a["values"]["tokens"]
    # one evaluation point, written once (rank 0)
    assert [r["step"] for r in two_rows if r.get("type") == "evaluation"] == [2]
    assert (two_out / "report" / "report.json").exists()
    one_weights = load_file(one_out / "checkpoint" / "model.safetensors")
    two_weights = load_file(two_out / "checkpoint" / "model.safetensors")
    for key, value in one_weights.items():
        torch.testing.assert_close(two_weights[key], value, rtol=1e-4, atol=1e-4)


def test_an_unknown_strategy_is_refused_naming_the_field():
    from core.errors import InvalidRequest
    from core.spec import parse_job_spec

    with pytest.raises(InvalidRequest) as error:
        parse_job_spec(
            {
                "model": "m",
                "forget": "f",
                "retain": "r",
                "resources": {"gpus": 2, "strategy": "megatron"},
            }
        )
    assert (error.value.code, error.value.param) == ("invalid_value", "resources.strategy")
    spec = parse_job_spec({"model": "m", "forget": "f", "retain": "r", "resources": {"gpus": 2}})
    assert spec.resources.strategy == "ddp"


def test_deepspeed_is_a_strategy_and_what_zero3_cannot_run_is_refused():
    """Accepted at submission whether or not the API's machine has deepspeed (the
    worker's must); fp16, sam_rho and bf16-pure full fine-tuning are refused."""
    from core.errors import InvalidRequest
    from core.spec import parse_job_spec

    base = {
        "model": "m",
        "forget": "f",
        "retain": "r",
        "resources": {"gpus": 2, "strategy": "deepspeed"},
    }
    assert parse_job_spec(base).resources.strategy == "deepspeed"
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj"]}
    pure = {"precision": "bf16-pure"}
    assert parse_job_spec({**base, "lora": lora, "hyperparameters": pure}).lora is not None
    for hyperparameters, param in (
        ({"precision": "fp16"}, "hyperparameters.precision"),
        ({"sam_rho": 0.1}, "hyperparameters.sam_rho"),
        (pure, "hyperparameters.precision"),
    ):
        with pytest.raises(InvalidRequest) as error:
            parse_job_spec({**base, "hyperparameters": hyperparameters})
        assert (error.value.code, error.value.param) == ("unsupported_strategy", param)
        assert "deepspeed" in error.value.message


def test_an_accelerate_launch_with_fsdp_is_refused(monkeypatch):
    from core.errors import InvalidRequest
    from core.training.loop import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(InvalidRequest) as error:
        make_accelerator("fp32")
    assert error.value.code == "unsupported_strategy"


def test_an_accelerate_launch_with_deepspeed_zero3_runs_the_job_under_deepspeed(monkeypatch):
    """accelerate launch --use_deepspeed --zero_stage 3: the job runs under the engine's
    own ZeRO-3 (accelerate itself stays in its plain mode); a launch asking for what the
    engine does not run (another stage, offloading, a DeepSpeed config file), or a spec
    asking for fsdp, is refused."""
    from accelerate.utils import DistributedType

    from core.errors import InvalidRequest
    from core.training.loop import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    assert distributed.job_strategy("ddp") == "deepspeed"
    assert distributed.job_strategy("deepspeed") == "deepspeed"
    assert make_accelerator("fp32").distributed_type != DistributedType.DEEPSPEED
    assert os.environ["ACCELERATE_USE_DEEPSPEED"] == "true"  # hidden from accelerate only
    with pytest.raises(InvalidRequest) as error:
        distributed.job_strategy("fsdp")
    assert (error.value.code, error.value.param) == ("unsupported_strategy", "resources.strategy")
    for variable, value in (
        ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "cpu"),
        ("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json"),
    ):
        with monkeypatch.context() as patch:
            patch.setenv(variable, value)
            for attempt in (
                lambda: make_accelerator("fp32"),
                lambda: distributed.job_strategy("ddp"),
            ):
                with pytest.raises(InvalidRequest) as error:
                    attempt()
                assert error.value.code == "unsupported_strategy"
                assert variable in error.value.message
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")  # accelerate's default: stage 2
    with pytest.raises(InvalidRequest):
        distributed.job_strategy("ddp")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert distributed.job_strategy("ddp") == "ddp"


def _exit_on_rank_1():
    if distributed.rank() == 1:
        os._exit(3)
    torch.distributed.barrier()  # would wait forever for rank 1


def _fail_on_rank_0():
    from core.errors import InvalidRequest

    if distributed.rank() == 0:
        raise InvalidRequest("forget.jsonl:3: no answer", param="forget", code="invalid_data")
    torch.distributed.barrier()  # would wait forever for rank 0
    return distributed.rank()


@two_devices
def test_a_dead_rank_or_rank_0_error_stops_every_rank(tmp_path):
    from core.errors import ObliviateError

    assert distributed.launch(2, distributed.world_size) == {0: 2, 1: 2}
    with pytest.raises(ObliviateError) as error:
        distributed.run_in_processes(2, _exit_on_rank_1, workdir=tmp_path)
    # Which process the error names is a race: rank 1's exit, or rank 0's barrier
    # failing on the connection rank 1 dropped, whichever the launcher sees first.
    assert error.value.code == "rank_failed" and " of 2 failed" in error.value.message, error.value
    with pytest.raises(ObliviateError) as error:
        distributed.run_in_processes(2, _fail_on_rank_0, workdir=tmp_path)
    assert (error.value.code, error.value.param) == ("invalid_data", "forget")
    assert list(tmp_path.iterdir()) == []


def _write_pid_and_wait(folder: str) -> None:
    import time

    (Path(folder) / f"rank{distributed.rank()}.pid").write_text(str(os.getpid()))
    time.sleep(120)


_LAUNCHER = """
import sys
from pathlib import Path
from core.training import distributed
from tests.unit.test_distributed import _write_pid_and_wait
distributed.run_in_processes(2, _write_pid_and_wait, sys.argv[1], workdir=Path(sys.argv[1]))
"""


@two_devices
def test_ranks_die_with_a_killed_launcher(tmp_path):
    """kill -9 of the process that launched the ranks (the worker) leaves no rank
    training on."""
    import signal
    import subprocess
    import sys
    import time

    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(tmp_path)], cwd=Path.cwd())
    deadline = time.monotonic() + 60
    pids = []
    while len(pids) < 2:
        assert time.monotonic() < deadline and launcher.poll() is None, "ranks did not start"
        pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid") if p.read_text()]
        time.sleep(0.2)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "a rank outlived its launcher"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()
