"""DeepSpeed ZeRO-3: one job in several processes, each holding a partition of the
weights, gradients and optimizer state (``resources.strategy: deepspeed``, or an
``accelerate launch`` with a DeepSpeed ZeRO-3 configuration; docs/distributed.md).

The same contract as ``core.training.fsdp``, through DeepSpeed's engine instead of
torch's FSDP2: the loop shares blocks out, normalizes and reduces metrics as under DDP,
and rank 0 keeps a whole copy on which it evaluates and saves. The engine is made with
``deepspeed.initialize`` directly, not through accelerate's DeepSpeed plugin:

- accelerate's ``backward`` under DeepSpeed also steps the optimizer whenever its own
  gradient-accumulation state says so (every call, outside ``accumulate()``), while the
  loop runs several backward passes per step (micro-batches, sharpness-aware passes)
  with loss terms already divided by the whole block;
- on several CPU processes accelerate's DeepSpeed mode finds no backend and counts one
  process (measured with accelerate 1.16), and the tests run there.

So this module builds the configuration itself: ZeRO stage 3, no DeepSpeed mixed
precision (accelerate's autocast over fp32 weights, as under DDP and FSDP), the loop's
clipping norm, one micro-step per optimizer step as DeepSpeed counts them (the loop
accumulates itself, marking the last micro-batch with
:func:`set_gradient_sync`). DeepSpeed averages gradients over processes as DDP does, so
the loop's ``loss * world`` holds.

Saved training states are the DDP ones, as under FSDP: weights and AdamW moments are
gathered whole on rank 0 and stored keyed by parameter index in
``torch.optim.Optimizer.state_dict``'s format, so a run paused under one strategy
resumes under any other (:func:`load_optimizer_state` partitions them again).
"""

from __future__ import annotations

import copy
from typing import Any

from core.training import distributed

#: DeepSpeed's own default; tests lower it to 0 so that their tiny model's parameters
#: are partitioned too (below it a parameter stays whole on every rank).
PARAM_PERSISTENCE_THRESHOLD = 100_000


def is_engine(model) -> bool:
    """A DeepSpeed engine (without importing deepspeed where it is absent)."""
    return type(model).__name__ == "DeepSpeedEngine"


def require() -> None:
    """deepspeed must be installed (the ``deepspeed`` extra of pyproject.toml)."""
    from core.errors import InvalidRequest

    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise InvalidRequest(
            "resources.strategy: deepspeed needs the deepspeed package on the worker "
            "(pip install 'obliviate[deepspeed]'); use fsdp or ddp",
            param="resources.strategy",
            code="unsupported_strategy",
        ) from None


def config(hparams, world: int) -> dict:
    return {
        # DeepSpeed checks these add up; the loop, not DeepSpeed, accumulates micro-batches.
        "train_micro_batch_size_per_gpu": hparams.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": hparams.batch_size * world,
        "gradient_clipping": float(hparams.max_grad_norm or 0.0),
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": PARAM_PERSISTENCE_THRESHOLD,
        },
        # The loop's torch AdamW (parameter groups, schedule): ZeRO-3 partitions its state.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def initialize(model, optimizer, hparams, world: int):
    """Partition ``model`` and wrap ``optimizer`` (in place); returns the engine and its
    optimizer. Every rank must hold the same weights (``fsdp.broadcast_weights``)."""
    import deepspeed

    groups = list(optimizer.param_groups)
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config(hparams, world), dist_init_required=False
    )
    # DeepSpeed drops the loop's empty groups (LoRA trains no norm weights) from the
    # optimizer in place, but its schedule and saved states count them: put them back.
    # After the others: DeepSpeed refers to its groups by position.
    kept = list(optimizer.param_groups)
    dropped = [group for group in groups if not any(group is k for k in kept)]
    if groups != kept + dropped:
        raise ValueError("an empty optimizer group before a non-empty one")
    optimizer.param_groups.extend(dropped)
    return engine, ds_optimizer


def set_gradient_sync(engine, sync: bool) -> None:
    """The last micro-batch of a step: DeepSpeed steps only at such a boundary."""
    engine.set_gradient_accumulation_boundary(sync)


def step(engine) -> float:
    """Clip (to the configured norm), step and zero the gradients; returns the norm
    before clipping, over every rank's partitions. DeepSpeed computes the norm inside
    its step, so the loop's check for a non-finite norm comes after it (the run then
    fails and publishes nothing, as before a step)."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else 0.0


def _trainable(engine) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def full_trainable_weights(engine) -> dict[str, Any]:
    """The trainable weights, whole, on the CPU: on rank 0 (the others get an empty
    dict). Every rank must call it (each weight is all-gathered)."""
    import deepspeed

    main = distributed.is_main()
    weights = {}
    for name, param in _trainable(engine):
        # One at a time: a whole model never sits gathered on every rank at once.
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if main:
                weights[name] = param.detach().to("cpu", copy=True)
    return weights


def parameter_groups(optimizer) -> list[list]:
    """The parameters of each group of the loop's optimizer, before ``initialize``
    replaces them with DeepSpeed's flat partitions."""
    return [list(group["params"]) for group in optimizer.param_groups]


def _z3(param):
    return param._z3_optimizer


def _partition(param, key: str | None):
    """This rank's slice of ``param``'s fp32 master weight (``key`` None) or optimizer
    state, as a view into DeepSpeed's flat partition, and that flat tensor."""
    z3 = _z3(param)
    group, offset, count = z3.grad_position[z3.get_param_id(param)]
    flat = z3.fp32_partitioned_groups_flat[group]
    source = flat if key is None else z3.optimizer.state[flat][key]
    return source.narrow(0, offset, count), flat


def full_optimizer_state(engine, optimizer, groups: list[list]) -> dict | None:
    """The optimizer's state, whole, in ``Optimizer.state_dict``'s format (keyed by
    parameter index, groups as the loop made them): on rank 0, None on the others.
    Every rank must call it. Before the first step AdamW has no state, as in torch."""
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = optimizer.optimizer  # the loop's torch AdamW, over DeepSpeed's flat partitions
    main = distributed.is_main()
    state: dict = {}
    index = 0
    param_groups = []
    for group, params in zip(inner.param_groups, groups):
        ids = []
        for param in params:
            _, flat = _partition(param, None)
            saved = inner.state.get(flat)
            if saved:
                entry = {}
                for key, value in saved.items():
                    if key == "step":
                        entry[key] = value.detach().to("cpu", copy=True)
                    else:
                        whole = safe_get_full_optimizer_state(param, key)
                        if main:
                            entry[key] = whole.detach().to("cpu", copy=True).view(param.ds_shape)
                        del whole
                if main:
                    state[index] = entry
            ids.append(index)
            index += 1
        param_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
    if not main:
        return None
    return {"state": state, "param_groups": copy.deepcopy(param_groups)}


def load_optimizer_state(engine, optimizer, groups: list[list], saved: dict) -> None:
    """Partition a saved optimizer state (``Optimizer.state_dict``'s format, whole, as
    every rank reads it from the run folder) into DeepSpeed's flat partitions."""
    import torch

    params = [p for group in groups for p in group]
    if sum(len(group["params"]) for group in saved["param_groups"]) != len(params):
        raise ValueError(
            "the saved optimizer state does not fit this model's trainable weights: resume "
            "with the same model, LoRA settings and method"
        )
    inner = optimizer.optimizer
    for group, entry in zip(inner.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in entry.items() if k != "params"})
    rank, world = distributed.rank(), distributed.world_size()
    for index, values in saved["state"].items():
        param = params[index]
        for key, value in values.items():
            _, flat = _partition(param, None)
            slot = inner.state.setdefault(flat, {})
            if key == "step":
                slot["step"] = value.detach().clone()
                continue
            if key not in slot:
                # torch's AdamW makes its moments lazily, at the first step: make them
                # here, over the whole flat partition, for the values to go into.
                slot[key] = torch.zeros_like(flat)
            mine, _ = _partition(param, key)
            # Rank r holds elements [r * size, (r + 1) * size) of the padded parameter;
            # the last ranks' slices may run past its end (padding).
            size = mine.numel()
            whole = value.detach().flatten().to(mine.device, mine.dtype)
            padded = torch.zeros(size * world, dtype=mine.dtype, device=mine.device)
            padded[: whole.numel()] = whole
            mine.copy_(padded[rank * size : (rank + 1) * size])
