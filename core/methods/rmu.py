"""RMU, Representation Misdirection for Unlearning (Li et al., WMDP, ICML 2024, arXiv
2403.03218): the forget tokens' activations at one layer are steered to a fixed random
direction, the retain tokens' activations held at the original model's.

    L_RMU = E_forget[ ||h_l(x) - c u||^2 ] + alpha E_retain[ ||h_l(x) - h_l^orig(x)||^2 ]

``h_l`` is the residual stream after layer ``l`` at every real token (prompt and answer),
``u`` a unit vector drawn uniformly from [0, 1)^d with the job's seed and ``c`` the mean
activation norm of the forget tokens under the original model times ``steering_coeff``
(the paper sets ``c`` by hand per model; relative to the norm it means the same on any
width). Only the layers before ``l`` train, so that the later layers, which read the
representation, stay the original's. Squared distances are summed over the hidden
dimension and averaged over a sequence's tokens.

Why it is here: the likelihood-lowering losses (SimNPO, NPO) leave the model's preference
for the right value over wrong ones in the same slot, which is what the oracle's forget
quality and the knowledge check read (docs/minitofu.md, stop 38); scrambling the subject's
representation removes the preference in any phrasing. Unmatched, it flattens the truth
ratios at 1 and over-forgets (membership AUC near 0): under ``match_holdout`` a record is
steered only while its answer is likelier than the holdout answer of the same rank, which
on the Llama benchmark first reached the oracle's neighbourhood on the build where
SimNPO's recipe fails.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.errors import InvalidRequest
from core.methods.base import (
    ForgetInputs,
    LossTerm,
    Method,
    UnlearningHyperparameters,
    one_term_forget_tokens,
)


class RMUHyperparameters(UnlearningHyperparameters):
    layer: int | Literal["auto"] = Field(
        "auto",
        description="The layer whose output is steered (1 to the model's layers - 1), or "
        "auto: a quarter of the depth plus one (2 of a 4-layer model, 9 of 32; WMDP used "
        "7 of Zephyr-7B's 32). Only the layers before it train.",
        json_schema_extra={"minimum": 1},
    )
    steering_coeff: float = Field(
        3.0,
        gt=0,
        le=1000,
        description="The control vector's norm, as a multiple of the forget tokens' mean "
        "activation norm at that layer under the original model.",
    )
    retain_loss: Literal["activations", "nll", "kl", "none"] = Field(
        "activations",
        description="Retain term: activations (RMU's: the squared distance of the retain "
        "tokens' activations at the steered layer from the original model's), NLL on "
        "retain answers, KL to the original model on retain answers, or none.",
    )
    retain_coeff: float = Field(
        100.0, ge=0, le=100_000, description="Weight (alpha) of the retain term."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "two_phase"] = Field(
        "constant", description="Schedule after warm-up (RMU's: constant)."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps warming up.")
    epochs: int = Field(16, ge=1, le=1000, description="Passes over the forget set.")
    forget_tokens: Literal["answer", "facts"] = one_term_forget_tokens()
    match_holdout: bool | None = Field(
        None,
        description="Distribution-matched steering (as for every method: a record is "
        "steered only while its answer is likelier than the holdout answer of the same "
        "rank). null: on where the job has a target, since unmatched RMU flattens the "
        "truth ratios at 1 and pushes the forget answers past unseen data's likelihood.",
    )


def steered_layer(hparams: RMUHyperparameters, n_layers: int) -> int:
    """The index into ``hidden_states`` (0: the embeddings) of the steered layer's output."""
    if hparams.layer == "auto":
        return min(max(1, round(n_layers / 4) + 1), max(1, n_layers - 1))
    if not 1 <= hparams.layer <= n_layers - 1:
        raise InvalidRequest(
            f"the model has {n_layers} layers: layer must be from 1 to {n_layers - 1} "
            "(the last layer's output is what the head reads), or 'auto'",
            param="hyperparameters.layer",
            code="invalid_value",
        )
    return hparams.layer


def model_layers(model) -> int:
    config = model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layer)


def squared_distance(states, target, mask):
    """Per sequence, the mean over its real tokens of ``||states - target||^2``."""
    distance = ((states.float() - target.float()) ** 2).sum(-1) * mask
    return distance.sum(dim=1) / mask.sum(dim=1).clamp_min(1)


def control_vector(model, forget, pad_id, hparams: RMUHyperparameters, seed: int, device):
    """``c u``: the steering target, from the original weights and the job's seed only,
    so that a resumed run rebuilds the same one."""
    import torch

    from core.data.encoding import collate

    layer = steered_layer(hparams, model_layers(model))
    total, count, width = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(forget), hparams.batch_size * 2):
            batch = collate(forget[start : start + hparams.batch_size * 2], pad_id)
            mask = batch["attention_mask"].to(device).bool()
            states = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=mask.long(),
                output_hidden_states=True,
            ).hidden_states[layer]
            total += float(states.float().norm(dim=-1)[mask].sum())
            count += int(mask.sum())
            width = states.shape[-1]  # the vector lives where the states do
    direction = torch.rand(width, generator=torch.Generator().manual_seed(seed))
    norm = hparams.steering_coeff * total / max(count, 1)
    return (norm * direction / direction.norm()).to(device)


def train_only_lower_layers(model, hparams: RMUHyperparameters) -> None:
    """Freeze everything but the layers before the steered one (their LoRA adapters,
    under LoRA): the embeddings and the later layers stay the original's."""
    import torch

    n_layers = model_layers(model)
    layer = steered_layer(hparams, n_layers)
    blocks = next(
        (
            name
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers
        ),
        None,
    )
    if blocks is None:
        raise InvalidRequest(
            "RMU could not find the model's list of transformer layers",
            param="method",
            code="unsupported_model",
        )
    lower = tuple(f"{blocks}.{i}." for i in range(layer))
    for name, parameter in model.named_parameters():
        if not name.startswith(lower):
            parameter.requires_grad_(False)


def forget_term(inputs: ForgetInputs, hparams: RMUHyperparameters) -> LossTerm:
    if inputs.hidden_states is None or inputs.context is None:
        raise ValueError("RMU needs the forget batch's hidden states and its control vector")
    layer = steered_layer(hparams, len(inputs.hidden_states) - 1)
    return LossTerm(
        per_sequence=squared_distance(
            inputs.hidden_states[layer], inputs.context, inputs.attention_mask
        ),
        reduction="sequence",
    )


def retain_activations(states, reference, mask, hparams: RMUHyperparameters):
    """RMU's retain term per sequence, from both models' ``hidden_states``."""
    layer = steered_layer(hparams, len(states) - 1)
    return squared_distance(states[layer], reference[layer], mask)


METHOD = Method(
    name="rmu",
    title="RMU",
    description="Representation misdirection: the forget tokens' activations at one layer "
    "steered to a random direction, the retain tokens' held at the original's. With a "
    "target, match_holdout stops steering each record at unseen data's likelihood.",
    hyperparameters=RMUHyperparameters,
    forget_term=forget_term,
    hidden_states=True,
    prepare=control_vector,
    trainable=train_only_lower_layers,
    paper="arXiv:2403.03218",
)
