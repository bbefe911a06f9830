"""FILA, the Fisher-weighted LoRA initialisation of LoKU (Cha et al., arXiv 2408.06621),
for any method: ``lora.init: "fila"``.

1. One gradient pass over the forget set and one over the retain set with the adapters
   still zero: for every adapted weight W, the Fisher diagonals
   ``F_f = sum_batches grad^2 * n_answer_tokens / total answer tokens`` (grad of the
   batch's mean answer-token NLL; prompt and padding masked), ``F_r`` likewise.
2. Importance ``I = F_f / (1e-5 + F_r)`` (what matters for the forget set and not the
   retain set) and row scores ``r = sqrt(sum_cols I)``.
3. A weighted low-rank decomposition: ``U, S, V = svd_lowrank(diag(r) W, q=rank)``,
   ``S /= scaling``, ``A = (V sqrt(S))^T``, ``B = diag(1 / (r + 1e-5)) U sqrt(S)``.
   These become the adapters, and the base weight becomes ``W - scaling * B A``, so the
   model computes the same function at step 0 while the adapters start on the
   directions that matter most for forgetting.

The trained model is ``W - s B0 A0 + s B A``. Its saved adapter must apply to the
*original* base (the one users have), so :func:`fold_into_saved_adapter` rewrites it as
the rank-2r adapter ``[B | -B0] [A ; A0]`` with alpha doubled (same scaling); a merged
model is the live weights merged, which equals it. The offsets ``(B0, A0)`` ride on the
peft model as ``fila_offsets``. Memory: two fp32 Fisher buffers per adapted weight.

With a bf16 base (LoRA under mixed precision) ``W - s B0 A0`` is rounded to bf16, so
the model at step 0 and the folded adapter on the original base agree with the live
model to bf16 rounding, not exactly. Under several processes each runs the whole pass
(same data, same result).
"""

from __future__ import annotations

import json
from pathlib import Path

FISHER_EPS = 1e-5
ROW_EPS = 1e-5
OVERSAMPLE = 8


def fisher_diagonals(model, weights, examples, pad_id, batch_size, device) -> list:
    """Per weight, ``sum_b grad_b^2 * n_b / sum_b n_b`` over batches of ``examples``,
    where ``grad_b`` is the gradient of batch b's mean answer-token NLL and n_b its
    answer tokens. The weights need ``requires_grad``; their ``.grad`` is left alone."""
    import torch

    from core.data.encoding import collate
    from core.models.scoring import sequence_nll

    fisher = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    total = 0
    for start in range(0, len(examples), batch_size):
        batch = {
            k: v.to(device)
            for k, v in collate(examples[start : start + batch_size], pad_id).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n_answer = sequence_nll(logits, batch["labels"])
        n = int(n_answer.sum())
        if n == 0:
            continue
        grads = torch.autograd.grad(nll.sum() / n, weights, allow_unused=True)
        for buffer, grad in zip(fisher, grads):
            if grad is not None:
                buffer.add_(grad.float().pow(2), alpha=n)
        total += n
    return [buffer / max(total, 1) for buffer in fisher]


def row_scores(fisher_forget, fisher_retain):
    """``sqrt(sum_cols F_f / (1e-5 + F_r))``: one importance per output row."""
    return (fisher_forget / (FISHER_EPS + fisher_retain)).sum(dim=1).sqrt()


def fila_decompose(weight, rows, rank: int, scaling: float):
    """``(A [rank, in], B [out, rank])`` of the row-weighted low-rank decomposition, so
    that ``scaling * B @ A`` is the weighted rank-``rank`` approximation of ``weight``."""
    import torch

    weighted = rows.float().unsqueeze(1) * weight.float()
    q = min(rank, *weighted.shape)
    # A few extra columns and power iterations make the randomized top-q accurate
    # (the reference calls svd_lowrank(q=rank) with its defaults).
    u, s, v = torch.svd_lowrank(weighted, q=min(q + OVERSAMPLE, *weighted.shape), niter=4)
    u, s, v = u[:, :q], s[:q], v[:, :q]
    root = (s / scaling).sqrt()
    a = (v * root).T
    b = (1.0 / (rows.float() + ROW_EPS)).unsqueeze(1) * (u * root)
    if q < rank:  # a rank above the matrix's: the extra adapter rows start at zero
        a = torch.cat([a, a.new_zeros(rank - q, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - q)], dim=1)
    return a, b


def lora_layers(model) -> dict:
    """``{module name: LoRA layer}`` of a peft model's active adapter."""
    from peft.tuners.lora import LoraLayer

    name = model.active_adapter
    return {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, LoraLayer) and name in module.lora_A
    }


def fila_initialise(model, forget, retain, pad_id, batch_size, device, *, seed: int = 0):
    """Initialise a freshly made peft model's adapters with FILA, in place; the base
    weights become ``W - s B0 A0``. Returns ``model.fila_offsets``."""
    import torch

    adapter = model.active_adapter
    layers = lora_layers(model)
    if not layers:
        raise ValueError("FILA found no LoRA layers: check lora.target_modules")
    weights = [layer.base_layer.weight for layer in layers.values()]
    was_training = model.training
    model.eval()  # no dropout in the Fisher pass
    for weight in weights:
        weight.requires_grad_(True)
    try:
        fisher_forget = fisher_diagonals(model, weights, forget, pad_id, batch_size, device)
        fisher_retain = (
            fisher_diagonals(model, weights, retain, pad_id, batch_size, device)
            if retain
            else [torch.zeros_like(f) for f in fisher_forget]
        )
    finally:
        for weight in weights:
            weight.requires_grad_(False)
        model.train(was_training)

    offsets = {}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # svd_lowrank draws a random projection
        for (path, layer), weight, f_f, f_r in zip(
            layers.items(), weights, fisher_forget, fisher_retain
        ):
            scaling = layer.scaling[adapter]
            lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            # GPT-2's Conv1D stores its weight as [in, out]; peft marks those layers
            # fan_in_fan_out. The decomposition works on [out, in], as the adapters do.
            flip = (lambda t: t.T) if getattr(layer, "fan_in_fan_out", False) else (lambda t: t)
            a, b = fila_decompose(
                flip(weight), row_scores(flip(f_f), flip(f_r)), lora_a.shape[0], scaling
            )
            lora_a.copy_(a.to(lora_a.dtype))
            lora_b.copy_(b.to(lora_b.dtype))
            weight.copy_((weight.float() - scaling * flip(b @ a)).to(weight.dtype))
            offsets[path] = (b.detach().cpu(), a.detach().cpu())
    model.fila_offsets = offsets
    return offsets


def fold_into_saved_adapter(folder: Path, offsets: dict) -> None:
    """Rewrite a saved FILA adapter to apply to the original base: rank 2r,
    ``B' = [B | -B0]``, ``A' = [A ; A0]``, alpha doubled so the scaling is unchanged."""
    import torch
    from safetensors.torch import load_file, save_file

    weights_file = folder / "adapter_model.safetensors"
    state = load_file(weights_file)
    for path, (b0, a0) in offsets.items():
        key_a, key_b = f"{path}.lora_A.weight", f"{path}.lora_B.weight"
        if key_a not in state or key_b not in state:
            raise KeyError(f"FILA adapter {path!r} missing from {weights_file}")
        a, b = state[key_a], state[key_b]
        state[key_a] = torch.cat([a, a0.to(a.dtype)]).contiguous()
        state[key_b] = torch.cat([b, -b0.to(b.dtype)], dim=1).contiguous()
    save_file(state, weights_file, metadata={"format": "pt"})
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["r"] *= 2
    config["lora_alpha"] *= 2
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
