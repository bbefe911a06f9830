"""One job in two DeepSpeed ZeRO-3 processes (gloo, on CPU) gives what one process gives
at the same effective batch: the same loss trace and final weights, for full
fine-tuning and LoRA and every registered method (the scenarios of ``test_fsdp``), with
a last block smaller than the process count. Rank 0 alone evaluates, on an unpartitioned
copy; the training state it saves (at an evaluation point or a pause) is the one a
single process saves, and a run resumes from it under either strategy.
``obliviate unlearn --num-processes 2 --strategy deepspeed`` publishes the one-process
checkpoint.

Skipped where deepspeed is not installed (it is the ``deepspeed`` extra, which ``dev``
pulls in). The two-process checks are those of ``tests/unit/sharded_cases.py``, shared
with ``test_fsdp``; all their two-process runs happen in one spawn.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("deepspeed")

from core.training import distributed  # noqa: E402
from tests.unit import test_distributed as ddp  # noqa: E402
from tests.unit.sharded_cases import *  # noqa: E402, F403  (the shared tests, here under ZeRO-3)
from tests.unit.test_distributed import two_devices  # noqa: E402


@pytest.fixture(scope="module")
def strategy():
    """The strategy the shared tests of ``sharded_cases`` run under here (ZeRO-3)."""
    return "deepspeed"


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
