"""One job in several processes (DDP, FSDP through ``core.training.fsdp``, or DeepSpeed
ZeRO-3 through ``core.training.zero3``): who this process is, how a block is shared,
and what the processes agree on.

The training loop (``core.training.loop``) divides every loss term by the whole block's
sequences or answer tokens, all processes together, and DDP averages gradients, so the
loop scales each process's loss by the process count: the summed gradient is the one a
single process computes for the same block. What this module adds:

- **every rank always has work**: :func:`shard_block` deals a block out round-robin and
  pads a short share with zero-weight copies of a real example, so every rank runs the
  same number of forward and backward passes (a rank without a backward pass would
  leave the others waiting in DDP's all-reduce forever);
- **step metrics over all ranks**: :func:`reduce_metrics` sums losses and token counts
  and takes the min and max of the gradient weights;
- **rank 0 decides**: cancellation, pausing and the evaluation points' stop decision
  are asked on rank 0 only and broadcast (:func:`rank0_decides`); a non-finite loss on
  any rank stops all of them with the same error (:func:`ranks_where`);
- **launching**: :func:`run_in_processes` starts N processes on this machine through
  torch's elastic launcher (a loopback rendezvous on a free port), gloo on CPU, nccl
  on GPU, and turns rank 0's error, or a dead rank, into the job's error.

Only rank 0 evaluates, saves checkpoints and writes reports; ``core.pipeline`` asks
:func:`is_main`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

#: DDP waits this long in a collective before failing. Rank 0 evaluates at evaluation
#: points (and before training) while the other ranks wait, which can take a while on
#: a large model; a dead rank still ends the job, through the launcher.
PROCESS_GROUP_TIMEOUT = timedelta(hours=4)


def world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that evaluates, saves and reports."""
    return rank() == 0


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group() -> None:
    """Join the job's process group, when launched as one of several processes
    (``WORLD_SIZE`` > 1, as torchrun, ``accelerate launch`` and :func:`launch` set)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend(), timeout=PROCESS_GROUP_TIMEOUT)


#: What ``accelerate launch --use_deepspeed`` (or a DeepSpeed accelerate config) sets and
#: the engine would not honour: it applies ZeRO stage 3 itself (``core.training.zero3``),
#: with its own settings, and refuses a launch that asks for something else.
_DEEPSPEED_SETTINGS = {
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": ("3", "zero_stage: 3 (the only stage the engine runs)"),
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ("none", "offload_optimizer_device: none"),
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ("none", "offload_param_device: none"),
    "ACCELERATE_DEEPSPEED_CONFIG_FILE": (
        None,
        "no deepspeed_config_file (its options are not read)",
    ),
}


def deepspeed_launch() -> bool:
    """Launched by ``accelerate launch`` with DeepSpeed turned on."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def refuse_sharding_launch() -> None:
    """``accelerate launch`` with an FSDP configuration would have accelerate wrap the
    model itself, with options (sharding strategy, wrap policy, offloading) this engine
    does not read: refuse rather than run it as something else. FSDP is the job's
    ``resources.strategy: fsdp`` (``--strategy fsdp``), which ``core.training.fsdp``
    applies under a plain multi-GPU launch. A DeepSpeed configuration is accepted when
    it asks for what the engine runs, ZeRO stage 3 without offloading
    (:func:`job_strategy`)."""
    from core.errors import InvalidRequest

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise InvalidRequest(
            "an accelerate configuration with fsdp is not read (ACCELERATE_USE_FSDP is "
            "set): launch with a plain multi-GPU configuration and set "
            "resources.strategy: fsdp in the job spec (or --strategy fsdp); see "
            "docs/distributed.md",
            param="resources.strategy",
            code="unsupported_strategy",
        )
    if not deepspeed_launch():
        return
    for variable, (accepted, wanted) in _DEEPSPEED_SETTINGS.items():
        value = os.environ.get(variable)
        # accelerate's DeepSpeed plugin defaults to stage 2 when none is given
        value = "2" if value is None and variable.endswith("ZERO_STAGE") else value
        if value is not None and value.lower() != (accepted or ""):
            raise InvalidRequest(
                f"an accelerate DeepSpeed configuration with {variable}={value} is not run: "
                f"the engine applies DeepSpeed ZeRO-3 itself; use {wanted}, or a plain "
                "multi-GPU configuration with resources.strategy: deepspeed; see "
                "docs/distributed.md",
                param="resources.strategy",
                code="unsupported_strategy",
            )


def job_strategy(strategy: str) -> str:
    """The strategy a job's run uses: the spec's, or ``deepspeed`` under an accelerate
    launch with a DeepSpeed ZeRO-3 configuration (the launch is how such a user says
    so). A launch for DeepSpeed and a spec asking for FSDP contradict each other."""
    from core.errors import InvalidRequest

    if not deepspeed_launch() or strategy == "deepspeed":
        return strategy
    refuse_sharding_launch()
    if strategy == "fsdp":
        raise InvalidRequest(
            "the job spec asks for resources.strategy: fsdp, the accelerate launch for "
            "DeepSpeed: choose one",
            param="resources.strategy",
            code="unsupported_strategy",
        )
    return "deepspeed"


@contextmanager
def accelerate_without_deepspeed():
    """accelerate must not see a DeepSpeed launch: it would prepare the model with its
    own DeepSpeed plugin (and on CPU processes find no backend and count one process).
    The engine applies ZeRO-3 itself; accelerate gives it autocast and a device."""
    saved = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = saved


def shard_block(block: list[int], rank: int, world: int) -> tuple[list[int], list[bool]]:
    """This rank's share of ``block`` (round-robin) and which entries are real.

    Every rank gets ``ceil(len(block) / world)`` entries: a short share is padded with
    copies of the block's first example marked ``False``, which the loop weighs by
    zero. So a last block smaller than the process count still gives every rank a
    backward pass, and the gradient is the one of the real examples only.
    """
    per_rank = -(-len(block) // world)
    mine = block[rank::world]
    padding = per_rank - len(mine)
    return mine + [block[0]] * padding, [True] * len(mine) + [False] * padding


def _device():
    import torch

    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: list[float], op) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def reduce_metrics(
    sums: list[float], mins: list[float], maxs: list[float], world: int
) -> tuple[list[float], list[float], list[float]]:
    """Sums, minima and maxima over all ranks (unchanged with one process). An empty
    share contributes ``inf`` to a minimum and ``-inf`` to a maximum."""
    if world == 1:
        return sums, mins, maxs
    import torch.distributed as dist

    sums = _all_reduce(sums, dist.ReduceOp.SUM)
    extremes = _all_reduce([-m for m in mins] + list(maxs), dist.ReduceOp.MAX)
    return sums, [-m for m in extremes[: len(mins)]], extremes[len(mins) :]


def rank0_decides(ask: Callable[[], bool] | None, world: int) -> bool:
    """``ask()`` on rank 0, the answer on every rank. Other ranks never call ``ask``:
    only rank 0 reports to the service, so only it knows of a cancel or a pause."""
    answer = bool(ask()) if ask is not None and rank() == 0 else False
    if world == 1:
        return answer
    import torch.distributed as dist

    return _all_reduce([float(answer)], dist.ReduceOp.MAX)[0] > 0


def rank0_object(ask: Callable[[], Any] | None, world: int) -> Any:
    """``ask()`` on rank 0 (a picklable value), the same value on every rank."""
    value = ask() if ask is not None and rank() == 0 else None
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ranks_where(flag: bool, world: int) -> list[int]:
    """The ranks on which ``flag`` holds (every rank learns all of them)."""
    if world == 1:
        return [0] if flag else []
    import torch.distributed as dist

    one_hot = [0.0] * world
    one_hot[rank()] = float(flag)
    return [r for r, v in enumerate(_all_reduce(one_hot, dist.ReduceOp.SUM)) if v > 0]


def merge_dicts(values: dict, world: int) -> dict:
    """The union of every rank's dict (each rank sees only its share of examples)."""
    if world == 1:
        return values
    import torch.distributed as dist

    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, values)
    merged: dict = {}
    for part in gathered:
        merged.update(part or {})
    return merged


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(num_processes: int, entrypoint: Callable, *args) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` in ``num_processes`` processes on this machine and return
    each rank's return value. torch's elastic launcher (what ``torchrun`` runs) sets
    RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; the rendezvous listens on the
    loopback interface, on a free port. ``entrypoint`` must be a module-level function
    (the processes are spawned). A rank that fails or dies makes the launcher stop the
    others and raise ``ChildFailedError``.
    """
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_configs={"is_host": True},
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    return elastic_launch(config, entrypoint)(*args)


def run_in_processes(num_processes: int, entrypoint: Callable, *args, workdir: Path) -> Any:
    """``entrypoint(*args)`` in ``num_processes`` ranks (:func:`launch`); returns rank 0's
    value, or raises what rank 0 raised.

    A rank that stops with an error must not leave the others waiting in a collective
    (up to :data:`PROCESS_GROUP_TIMEOUT`): any rank that raises fails its process, which
    makes the launcher stop the rest. Rank 0's error (a cancel, a pause, a non-finite
    loss, bad data) is kept in a file under ``workdir`` and raised here as the job's
    error; when rank 0 has none (another rank crashed or was killed), the run fails
    with ``rank_failed``.
    """
    import pickle
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from core.errors import ObliviateError

    workdir.mkdir(parents=True, exist_ok=True)
    error_file = workdir / f".rank0-error-{uuid.uuid4().hex}.pickle"
    try:
        return launch(num_processes, _rank_entry, str(error_file), entrypoint, *args)[0]
    except ChildFailedError as failure:
        if error_file.exists():
            raise _restore_error(pickle.loads(error_file.read_bytes())) from None
        # The first to fail: the others often fail after it, their peer gone.
        rank, first = min(failure.failures.items(), key=lambda item: item[1].timestamp)
        raise ObliviateError(
            f"process {rank} of {num_processes} failed (exit code {first.exitcode}): "
            f"{first.message or 'see the worker log'}",
            code="rank_failed",
        ) from None
    finally:
        error_file.unlink(missing_ok=True)


def _rank_entry(error_file: str, entrypoint: Callable, *args) -> Any:
    import pickle

    from core.errors import ObliviateError

    _die_with_parent()
    init_process_group()
    try:
        return entrypoint(*args)
    except ObliviateError as error:
        # The job's own errors; a crash (or a peer gone) fails the run as rank_failed.
        if is_main():
            Path(error_file).write_bytes(pickle.dumps(_describe_error(error)))
        raise


def _die_with_parent() -> None:
    """A rank whose launching process is killed outright (``kill -9`` of the worker that
    claimed the job) must not train on, holding its GPU, while the reaper gives the job
    to another worker. torch's spawn asks the kernel for a SIGINT then, which a rank
    blocked in a collective only sees when the collective returns (up to the 4 h
    timeout); ask for SIGKILL instead (Linux)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _describe_error(error) -> dict:
    """What rank 0's error becomes in the launching process (errors keep their code,
    message and field; a pause its step)."""
    from core.errors import Cancelled, Paused

    if isinstance(error, Paused):
        step = error.state.step if error.state is not None else 0
        return {"kind": "paused", "message": error.message, "step": step}
    if isinstance(error, Cancelled):
        return {"kind": "cancelled", "message": error.message}
    return {"kind": "error", **error.to_dict()}


def _restore_error(described: dict) -> BaseException:
    from types import SimpleNamespace

    from core.errors import Cancelled, ObliviateError, Paused

    kind = described["kind"]
    if kind == "paused":
        return Paused(described["message"], state=SimpleNamespace(step=described["step"]))
    if kind == "cancelled":
        return Cancelled(described["message"])
    return ObliviateError(described["message"], param=described["param"], code=described["code"])
