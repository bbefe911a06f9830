"""FSDP: one job in several processes, each holding a shard of the weights, gradients and
optimizer state (``resources.strategy: fsdp``; docs/distributed.md).

The loop (``core.training.loop``) shares blocks out, normalizes and reduces metrics as
under DDP; FSDP changes only where the training state lives. The model is wrapped with
torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) directly, not through
accelerate's FSDP plugin: accelerate runs several CPU processes in its multi-CPU mode,
which ignores the plugin, and this engine wants the same code on CPU (gloo, where the
tests run) and GPUs (nccl). accelerate still provides autocast, the backward pass and a
DTensor-aware gradient clipping. FSDP2 keeps each parameter's name and ``requires_grad``
(its shards are ``DTensor`` parameters of the same module), so LoRA's mix of frozen and
trainable weights needs nothing special, and it averages gradients over processes in
its reduce-scatter as DDP does in its all-reduce (the loop's ``loss * world`` holds).

What the rest of the engine sees stays unsharded:

- **rank 0 keeps a whole copy** (on the CPU between evaluation points) and, at every
  evaluation point and at the end, every rank all-gathers the trainable weights into it
  (:func:`full_trainable_weights`). Evaluation, the verdict's probe and relearning
  check, the checkpoint and the report run on that copy, on rank 0 alone, as under DDP.
  Gathering, rather than running evaluation forwards on every rank, keeps the
  evaluation code single-process (generation, scoring and the relearning check take
  data-dependent paths that sharded forwards would have to repeat in lockstep on every
  rank) at the cost of rank 0 holding the whole *weights* once: a quarter of what full
  fine-tuning with AdamW holds (weights, gradients and two moments), which is what
  sharding is for;
- **saved training states are the DDP ones**: the optimizer state is gathered whole on
  rank 0 (:func:`full_optimizer_state`) and stored keyed by parameter index as
  ``torch.optim.Optimizer.state_dict`` keys it, so a run paused under one strategy
  resumes under the other (:func:`load_optimizer_state` shards it again).
"""

from __future__ import annotations

import copy
from typing import Any

from core.training import distributed


def _mesh(device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (distributed.world_size(),))


def _layer_classes(model) -> set[str]:
    """The transformer blocks' class names: transformers lists them as the modules a
    device map must not split (``_no_split_modules``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or [])


def broadcast_weights(model) -> None:
    """Rank 0's weights and buffers on every rank, as DDP does when it wraps a model, so
    that the shards make one model."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def shard(model, device):
    """Shard ``model`` (in place) over the job's processes, on ``device``: every
    transformer block is one FSDP unit (all-gathered for its forward and backward, freed
    after), the rest (the embeddings, the final norm, the head) the root's."""
    from torch.distributed.fsdp import fully_shard

    mesh = _mesh(device)
    classes = _layer_classes(model)
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in classes:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def set_gradient_sync(model, sync: bool) -> None:
    """Under gradient accumulation, reduce-scatter only after the last micro-batch (the
    others accumulate unsharded gradients), as DDP's ``no_sync`` does."""
    model.set_requires_gradient_sync(sync)


def _parameter_names(model, optimizer) -> list[list[str]]:
    """The name of every parameter of each optimizer group, in the group's order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def full_trainable_weights(model) -> dict[str, Any]:
    """The trainable weights, whole, on the CPU: on rank 0 (the others get an empty
    dict). Every rank must call it (each weight is all-gathered)."""
    main = distributed.is_main()
    weights = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        whole = param.detach().full_tensor() if hasattr(param, "full_tensor") else param
        if main:
            weights[name] = whole.detach().to("cpu", copy=True)
        del whole
    return weights


def full_optimizer_state(model, optimizer) -> dict | None:
    """The optimizer's state, whole, in ``Optimizer.state_dict``'s format (keyed by
    parameter index): on rank 0, None on the others. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not distributed.is_main():
        return None
    index = {}
    groups = []
    for group, names in zip(state["param_groups"], _parameter_names(model, optimizer)):
        ids = []
        for name in names:
            index[name] = len(index)
            ids.append(index[name])
        groups.append({**group, "params": ids})
    # A copy: on the CPU, unsharded entries (AdamW's step counts) are the live tensors.
    state = copy.deepcopy(state)
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": groups,
    }


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Shard a saved optimizer state (``Optimizer.state_dict``'s format, whole, as every
    rank reads it from the run folder) into ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [name for group in _parameter_names(model, optimizer) for name in group]
    if sum(len(group["params"]) for group in state["param_groups"]) != len(names):
        raise ValueError(
            "the saved optimizer state does not fit this model's trainable weights: resume "
            "with the same model, LoRA settings and method"
        )
    by_name = {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[index] for index in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )
