"""The ``auto`` hyperparameters: a learning rate from the model's width, and a batch
accumulation from the forget set's size.

Learning rate.

AdamW moves every weight by about the learning rate per step, whatever the gradient's
scale, so the change a step makes to a layer's output grows with the layer's fan-in:
the maximal-update parametrization (muP; Yang et al., "Tensor Programs V",
arXiv 2203.03466) keeps it constant by scaling Adam's learning rate for hidden weights
as ``1 / width``. Calibrated on the reference unlearning setups of 7-8B Llama models
(hidden size 4096, lr 1e-5; REFERENCES.md), that is ``lr = 0.04 / hidden_size``:

    hidden size   8192   4096   2048    1024    256      128     64
    lr            5e-6   1e-5   2e-5    4e-5    1.6e-4   3.1e-4  6.3e-4

(the 128-wide mini-TOFU model's best SimNPO and NPO sweeps chose 3e-4). LoRA adapters
start at zero and are low-rank: the usual adapter rate is ten times the full one
(LoKU's 1e-4 for 7B, REFERENCES.md). The verified training run does the rest: it
stops when the target is met, so a rate somewhat too high is caught by the
evaluation points, and one somewhat too low costs epochs, not correctness.

Gradient accumulation. The reference effective batch (32 sequences) makes 13 optimizer
steps per epoch of TOFU's forget10 (400 records) but one step per epoch of a 40-record
deletion request, which then needs dozens of epochs to move at all. ``auto`` aims at
about ``STEPS_PER_EPOCH`` steps per epoch: the effective batch is the forget set's size
over 8, rounded to whole micro-batches, between one micro-batch and the reference 32.

    forget records     16   72   120   200   400 and more
    accumulation       1    1    2     3     4      (micro-batches of 8, one process)
"""

from __future__ import annotations

import math

#: lr x hidden size for full fine-tuning (7B reference: 1e-5 x 4096)
FULL_RATE_TIMES_WIDTH = 0.04
LORA_FACTOR = 10.0
BOUNDS = (1e-6, 1e-2)


def model_width(model) -> int | None:
    """The hidden size of a transformers model (or its peft base)."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[-1]) if weight is not None else None


def auto_learning_rate(width: int, *, lora: bool) -> float:
    rate = FULL_RATE_TIMES_WIDTH / width * (LORA_FACTOR if lora else 1.0)
    return min(max(rate, BOUNDS[0]), BOUNDS[1])


def resolve_learning_rate(hparams, model, *, lora: bool) -> tuple[float, str]:
    """The run's learning rate and how it was chosen (for the manifest and report)."""
    if hparams.learning_rate != "auto":
        return float(hparams.learning_rate), "set in the job's hyperparameters"
    width = model_width(model)
    if width is None:
        rate = 1e-5 * (LORA_FACTOR if lora else 1.0)
        return rate, "auto: the model's width is unknown, so the 7B reference rate"
    rate = auto_learning_rate(width, lora=lora)
    rule = f"auto: {FULL_RATE_TIMES_WIDTH} / hidden size {width}" + (
        f" x {LORA_FACTOR:g} for LoRA adapters" if lora else ""
    )
    return rate, rule


STEPS_PER_EPOCH = 8
REFERENCE_EFFECTIVE_BATCH = 32


def auto_accumulation(n_examples: int, batch_size: int, processes: int = 1) -> int:
    per_step = batch_size * processes
    wanted = min(n_examples / STEPS_PER_EPOCH, REFERENCE_EFFECTIVE_BATCH)
    return max(1, min(math.ceil(REFERENCE_EFFECTIVE_BATCH / per_step), round(wanted / per_step)))


def resolve_hyperparameters(hparams, model, *, n_examples: int, lora: bool, processes: int = 1):
    """``hparams`` with every ``auto`` value decided, and how each was decided."""
    decided: dict[str, str] = {}
    update: dict = {}
    if hparams.learning_rate == "auto":
        update["learning_rate"], decided["learning_rate"] = resolve_learning_rate(
            hparams, model, lora=lora
        )
    if hparams.gradient_accumulation_steps == "auto":
        steps = auto_accumulation(n_examples, hparams.batch_size, processes)
        update["gradient_accumulation_steps"] = steps
        decided["gradient_accumulation_steps"] = (
            f"auto: about {STEPS_PER_EPOCH} steps per epoch of {n_examples} examples "
            f"(effective batch {steps * hparams.batch_size * processes})"
        )
    return hparams.model_copy(update=update), decided


def restore_resolved(hparams, saved: dict):
    """The hyperparameters of a resumed run from what its saved run decided (``saved``:
    ``{"resolved": ..., "decided": ...}``): automatic values stay as first decided, so a
    resumed run trains as it began (the accumulation steps are part of its data
    position); a learning rate the resuming spec sets by hand wins, so that a job
    continued (``continue_from``) with a lower rate for its added epochs gets it."""
    resolved = dict(saved["resolved"])
    decided = dict(saved["decided"])
    if hparams.learning_rate != "auto":
        resolved.pop("learning_rate", None)
        decided.pop("learning_rate", None)
    return hparams.model_copy(update=resolved), decided
