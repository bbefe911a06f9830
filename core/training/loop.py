"""The one training loop every method shares (and fine-tuning, and the relearning attack).

Per optimizer step it takes a block of ``batch_size x gradient_accumulation_steps x
processes`` forget examples, each paired with a retain example drawn at random, and
normalizes every loss term by the *whole block* (sequences or answer tokens, known from
the labels before any forward pass). So batch 8 x accumulation 1 and batch 2 x
accumulation 4 give the same update, and the result does not depend on the GPU count
at the same effective batch. accelerate handles devices, mixed precision and DDP
(``core.training.fsdp`` shards the model instead under ``strategy="fsdp"``, and
``core.training.zero3`` partitions it with DeepSpeed ZeRO-3 under ``"deepspeed"``);
``core.training.distributed`` shares blocks out, reduces metrics and lets rank 0 decide.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from core.data.encoding import IGNORE_INDEX, EncodedExample, collate
from core.errors import Cancelled, InvalidRequest, NonFiniteLoss, Paused
from core.methods.base import ForgetInputs, LossTerm, Method, UnlearningHyperparameters
from core.models.scoring import sequence_nll
from core.training import distributed, zero3
from core.training.divergence import check_step, non_finite_message
from core.training.state import (
    TrainingState,
    capture_rng,
    load_trainable_weights,
    restore_rng,
    trainable_weights,
)

if TYPE_CHECKING:
    import torch

    from core.spec import LoraSpec

log = logging.getLogger(__name__)


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: float
    loss: float
    forget_loss: float | None
    retain_loss: float | None
    lr: float
    grad_norm: float
    weight_mean: float | None
    weight_min: float | None
    weight_max: float | None
    tokens: int  # answer + prompt tokens processed so far
    elapsed_s: float

    def values(self) -> dict:
        """The per-step values stored by the service (everything but the counters)."""
        data = asdict(self)
        for key in ("step", "total_steps", "epoch"):
            data.pop(key)
        return data


@dataclass
class EvaluationPoint:
    """Handed to ``Callbacks.on_evaluation`` at each evaluation point."""

    step: int
    epoch: float
    total_steps: int
    #: the unwrapped model being trained (a peft model under LoRA); the callback may
    #: score it but must leave its weights and train/eval mode as it found them
    model: torch.nn.Module
    #: True at the last step of the budget
    final: bool
    #: the full training state at this step, for a resumable checkpoint
    capture_state: Callable[[], TrainingState]
    #: per-token NLL of each forget / retain example (by index) as of the last training
    #: forward that saw it (this epoch's, mostly): free measurements between points
    forget_nll: dict[int, float] = field(default_factory=dict)
    retain_nll: dict[int, float] = field(default_factory=dict)
    #: ``forget_tokens: both``: the same for each forget example's fact tokens, and for
    #: the rest of its answer (examples whose answer is all facts have none)
    fact_nll: dict[int, float] = field(default_factory=dict)
    rest_nll: dict[int, float] = field(default_factory=dict)
    #: whether the steps up to this point were sharpness-aware (``sam_rho``, from
    #: ``sam_from``'s step on)
    sharpness_aware: bool = False
    #: True at ``sam_from``'s step: the plain steps end here and the sharpness-aware ones
    #: begin after it (a monitor treats it as a first job's last point)
    phase_end: bool = False


@dataclass
class Callbacks:
    on_step: Callable[[StepMetrics], None] | None = None
    #: ``on_event(type, message, data)`` for phases: reference pass, training, ...
    on_event: Callable[[str, str, dict], None] | None = None
    #: polled every step; True stops the run with :class:`Cancelled`
    should_cancel: Callable[[], bool] | None = None
    #: polled every step; True stops the run with :class:`Paused`, carrying the state
    should_pause: Callable[[], bool] | None = None
    #: called at every evaluation point; returning True ends training there
    on_evaluation: Callable[[EvaluationPoint], bool] | None = None
    #: asked at the start and after every evaluation point, under
    #: ``hyperparameters.match_holdout``: per forget example (by index), the per-token
    #: NLL from which its answer is no longer pushed (None for one not measured yet), or
    #: None to push every answer; under ``forget_tokens: both`` a pair per example (the
    #: ceiling of its phrasing, the tokens that are not facts, and of its fact tokens)
    forget_ceilings: Callable[[], list | None] | None = None
    #: asked at the same times (also under ``hyperparameters.sam_steer``): the
    #: sharpness-aware radius for the steps up to the next point, or None for
    #: ``hyperparameters.sam_rho``
    sam_rho: Callable[[], float | None] | None = None

    def event(self, kind: str, message: str, **data) -> None:
        if self.on_event and distributed.is_main():
            self.on_event(kind, message, data)


@dataclass
class TrainResult:
    model: torch.nn.Module  # unwrapped; a peft model when LoRA was used
    history: list[StepMetrics] = field(default_factory=list)
    steps: int = 0
    trained_tokens: int = 0
    elapsed_s: float = 0.0
    #: True when an evaluation point ended training before the budget was spent
    stopped_early: bool = False
    total_steps: int = 0


#: retain terms measured against the original model (a frozen copy, or LoRA's base)
REFERENCE_RETAIN = ("kl", "activations")


def resolve_mixed_precision(precision: str) -> str:
    """accelerate's autocast mode for a ``precision`` setting."""
    import torch

    if precision in ("fp32", "bf16-pure"):
        return "no"  # bf16-pure: the weights are already bf16; no autocast, no scaler
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return precision


def weights_dtype(precision: str, lora: bool) -> str:
    """The dtype to load a model's weights in for training at ``precision``.

    Mixed precision needs fp32 master weights: AdamW updates of ~1e-5 relative size round
    away in bf16 weights, and fp16 gradient scaling refuses fp16 parameters. Under LoRA the
    base weights are frozen, so they can stay in the low-precision dtype (peft keeps the
    adapters in fp32) and only cost half the memory.
    """
    if precision == "bf16-pure":
        return "bf16"
    mode = resolve_mixed_precision(precision)
    return mode if lora and mode in ("bf16", "fp16") else "fp32"


def make_accelerator(precision: str):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps process-wide singletons; a worker runs many jobs, each with its
    # own precision, so start every run from a clean state.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    distributed.refuse_sharding_launch()
    distributed.init_process_group()
    # Several processes without GPUs: accelerate's multi-CPU mode (gloo) needs cpu=True.
    cpu = distributed.world_size() > 1 and not torch.cuda.is_available()
    threads = torch.get_num_threads()
    with distributed.accelerate_without_deepspeed():
        accelerator = Accelerator(mixed_precision=resolve_mixed_precision(precision), cpu=cpu)
    # Its multi-CPU set-up picks a thread count of its own; keep core.runtime's.
    torch.set_num_threads(threads)
    return accelerator


def _refuse_under_sharding(strategy: str, method, hparams, mixed_precision: str, lora) -> None:
    """What FSDP and ZeRO-3 do not run (the job spec's validation refuses the same at
    submission; this catches a run started otherwise, e.g. by an accelerate launch)."""
    if method.trainable is not None:
        raise InvalidRequest(
            f"method {method.name!r} trains part of the model, which {strategy} was not "
            "tried with: use ddp",
            param="resources.strategy",
            code="unsupported_strategy",
        )
    if hparams.sam_rho > 0:
        raise InvalidRequest(
            f"sam_rho is not supported under {strategy} (the perturbation needs the whole "
            "gradient's norm): use ddp, or sam_rho 0",
            param="hyperparameters.sam_rho",
            code="unsupported_strategy",
        )
    if mixed_precision == "fp16":
        raise InvalidRequest(
            f"precision fp16 is not supported under {strategy} (its gradient scaler was not "
            "tried on sharded gradients): use bf16, bf16-pure or fp32",
            param="hyperparameters.precision",
            code="unsupported_strategy",
        )
    if strategy == "deepspeed" and hparams.precision == "bf16-pure" and lora is None:
        raise InvalidRequest(
            "precision bf16-pure full fine-tuning is not supported under deepspeed (ZeRO-3 "
            "keeps fp32 master copies of bf16 weights, so it would not train as under ddp "
            "or fsdp): use bf16 or fp32, or LoRA",
            param="hyperparameters.precision",
            code="unsupported_strategy",
        )
    if strategy == "deepspeed":
        zero3.require()


def total_optimizer_steps(n_forget: int, hparams, num_processes: int = 1) -> int:
    block = hparams.effective_batch_size * num_processes
    steps = hparams.epochs * math.ceil(n_forget / block)
    return min(steps, hparams.max_steps) if hparams.max_steps else steps


def make_optimizer(params, hparams, total_steps: int):
    """AdamW without weight decay on biases and norms, and the warm-up + decay schedule."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": hparams.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=hparams.learning_rate,
    )
    warmup = int(round(hparams.warmup_ratio * total_steps))
    start = sam_start_step(hparams, total_steps)
    if hparams.lr_scheduler == "two_phase" and start > 0:
        rate = functools.partial(
            two_phase_rate,
            start=start,
            warmup_first=int(round(hparams.warmup_ratio * start)),
            total=total_steps,
            warmup=warmup,
        )
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    scheduler = get_scheduler(
        {
            "linear": "linear",
            "two_phase": "linear",
            "cosine": "cosine",
            "constant": "constant_with_warmup",
        }[hparams.lr_scheduler],
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def two_phase_rate(step: int, *, start: int, warmup_first: int, total: int, warmup: int) -> float:
    """``lr_scheduler: two_phase``'s multiplier at ``step``: before ``start``, a linear
    schedule of ``start`` steps (``warmup_first`` warming up); from it on, a linear
    schedule of ``total`` steps (``warmup`` warming up) where it stands, as when a job of
    ``start`` steps is continued to ``total`` (``run_training``'s ``new_schedule``)."""
    if step < start:
        length, warm = start, warmup_first
    else:
        length, warm = total, warmup
    if step < warm:
        return step / max(1, warm)
    return max(0.0, (length - step) / max(1, length - warm))


def apply_lora(model, lora: LoraSpec, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; this hook
        # makes them require grad so adapter gradients flow.
        model.enable_input_require_grads()
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def reference_nll(
    model, examples: list[EncodedExample], pad_token_id: int, batch_size: int, device
) -> torch.Tensor:
    """Summed answer NLL of every example under ``model``, in one inference pass.

    NPO's reference is the model before unlearning and never changes, so computing this
    once replaces keeping a frozen copy of the model for the whole run.
    """
    import torch

    out = torch.empty(len(examples), dtype=torch.float32)
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = collate([examples[i] for i in index], pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            nll, _ = sequence_nll(logits, batch["labels"])
            out[index] = nll.float().cpu()
    model.train(was_training)
    return out


def answer_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL(ref || current) summed over answer positions only.

    One public implementation averages the KL over prompt and padding positions too,
    which dilutes the retain signal by prompt length; we mask to the answer.
    """
    import torch.nn.functional as F

    mask = labels[:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum(dim=1)


def sam_start_step(hparams, total_steps: int) -> int:
    """The first step with sharpness-aware updates (``hyperparameters.sam_from``)."""
    return int(round(getattr(hparams, "sam_from", 0.0) * total_steps))


def _block_tokens(examples: list[EncodedExample], part: str = "answer") -> int:
    """Answer tokens of a block; under ``forget_tokens: both`` (examples with
    ``fact_labels``) those of the ``facts``, or of the ``rest`` (the answers that have
    tokens besides their facts)."""
    if part == "answer":
        return sum(e.n_answer_tokens for e in examples)
    total = 0
    for e in examples:
        if e.fact_labels is None:
            continue
        facts = sum(label != IGNORE_INDEX for label in e.fact_labels)
        total += facts if part == "facts" else e.n_answer_tokens - facts
    return total


def run_training(
    model,
    tokenizer,
    forget: list[EncodedExample],
    retain: list[EncodedExample] | None,
    method: Method,
    hparams: UnlearningHyperparameters,
    *,
    seed: int = 0,
    lora: LoraSpec | None = None,
    callbacks: Callbacks | None = None,
    evaluate_every_steps: int | None = None,
    resume: TrainingState | None = None,
    new_schedule: bool = False,
    strategy: str = "ddp",
) -> TrainResult:
    """Train ``model`` in place with ``method`` and return it with the step history.

    ``forget`` is the set whose likelihood the method's forget term acts on (for plain
    fine-tuning, the training set with a descent objective). With
    ``callbacks.on_evaluation`` the loop stops at evaluation points: every
    ``evaluate_every_steps`` optimizer steps, or at the end of every epoch when that is
    None, and always at the last step. ``resume`` continues a run from the state one of
    its evaluation points (or a pause) captured; ``model`` must then hold the original
    weights, from which references (NPO's NLLs, a KL copy) are rebuilt as at the start.
    ``new_schedule`` lets a resumed run have another length than the one it came from
    (a finished job continued with a larger budget): the schedule then follows the new
    length from the step reached. ``strategy``: how several processes share the model,
    ``ddp`` (each holds it whole), ``fsdp`` (each holds a shard, ``core.training.fsdp``)
    or ``deepspeed`` (ZeRO-3 partitions, ``core.training.zero3``); one process trains the
    same under any.
    """
    import torch
    from accelerate.utils import set_seed

    from core.runtime import cpu_threads_for
    from core.training.auto import resolve_hyperparameters

    hparams, _ = resolve_hyperparameters(
        hparams, model, n_examples=len(forget), lora=lora is not None, processes=_processes()
    )

    with cpu_threads_for(model):
        callbacks = callbacks or Callbacks()
        set_seed(seed)
        accelerator = make_accelerator(hparams.precision)
        device = accelerator.device
        sharded = strategy in ("fsdp", "deepspeed") and accelerator.num_processes > 1
        zero = sharded and strategy == "deepspeed"  # else FSDP, when sharded
        if sharded:
            _refuse_under_sharding(strategy, method, hparams, accelerator.mixed_precision, lora)
        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        use_retain = hparams.retain_loss != "none" and hparams.retain_coeff > 0 and bool(retain)
        sharpness_aware = hparams.sam_rho > 0 and hparams.forget_coeff > 0

        model.to(device)
        ref_nll = None
        if method.needs_reference_nll:
            if resume is not None and resume.ref_nll is not None:
                ref_nll = resume.ref_nll
            else:
                callbacks.event(
                    "phase", "computing reference log-likelihoods of the forget set", n=len(forget)
                )
                # Under the same autocast as training, so that the log-ratio starts at 0
                # and NPO's weights at 1 in bf16 too.
                with accelerator.autocast():
                    ref_nll = reference_nll(model, forget, pad_id, hparams.batch_size * 2, device)

        companions = (
            method.companions(forget, tokenizer, hparams, seed) if method.companions else None
        )
        context = None
        if method.prepare is not None:
            # From the original weights and the seed: a resumed run (whose model holds the
            # original weights here too) rebuilds the same.
            with accelerator.autocast():
                context = method.prepare(model, forget, pad_id, hparams, seed, device)
        fila = lora is not None and lora.init == "fila"
        ref_model = None
        if use_retain and hparams.retain_loss in REFERENCE_RETAIN and (lora is None or fila):
            # Full fine-tuning changes every weight, so the reference needs a frozen copy;
            # with LoRA the base model with adapters disabled serves instead (no copy),
            # unless FILA moved part of the base weights into the adapters.
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)

        if hparams.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if lora is not None:
            model = apply_lora(model, lora, hparams.gradient_checkpointing)
        if fila:
            from core.training.fila import fila_initialise

            # Deterministic (seeded svd_lowrank), so a resumed run rebuilds the same base.
            callbacks.event("phase", "FILA: Fisher-weighted LoRA initialisation")
            with accelerator.autocast():
                fila_initialise(
                    model, forget, retain or [], pad_id, hparams.batch_size, device, seed=seed
                )
        if method.trainable is not None:
            method.trainable(model, hparams)
        if resume is not None:
            load_trainable_weights(model, resume.weights)
        model.train()

        whole = None  # sharded: rank 0's unsharded copy for evaluation and saving
        if sharded:
            from core.training import fsdp

            fsdp.broadcast_weights(model)
            if accelerator.is_main_process:
                # On the CPU between evaluation points; fully_shard moves the shards back.
                whole = copy.deepcopy(model.to("cpu"))
                if zero:
                    model.to(device)
            if not zero:
                fsdp.shard(model, device)
                if ref_model is not None:
                    fsdp.shard(ref_model, device)
        params = [p for p in model.parameters() if p.requires_grad]
        total_steps = total_optimizer_steps(len(forget), hparams, accelerator.num_processes)
        sam_start = sam_start_step(hparams, total_steps)
        optimizer, scheduler = make_optimizer(params, hparams, total_steps)
        groups = None  # under ZeRO-3, the optimizer's parameters, for saving its state
        if zero:
            groups = zero3.parameter_groups(optimizer)
            model, optimizer = zero3.initialize(
                model, optimizer, hparams, accelerator.num_processes
            )
            # The KL term's frozen copy stays whole on every rank (no gradients or
            # moments: a quarter of what ZeRO-3 partitions).
            if ref_model is not None:
                ref_model.to(device)
        elif not sharded:
            model, optimizer = accelerator.prepare(model, optimizer)
            if ref_model is not None:
                ref_model.to(device)

        world, rank = accelerator.num_processes, accelerator.process_index
        block_size = hparams.effective_batch_size * world
        generator = torch.Generator().manual_seed(seed)
        result = TrainResult(model=None, total_steps=total_steps)
        step, tokens, elapsed_before, first_epoch, first_block = 0, 0, 0.0, 0, 0
        seen_forget: dict[int, float] = {}
        seen_retain: dict[int, float] = {}
        seen_facts: dict[int, float] = {}
        seen_rest: dict[int, float] = {}
        if resume is not None:
            if resume.total_steps != total_steps and not new_schedule:
                raise ValueError(
                    f"the saved training state planned {resume.total_steps} steps, this run "
                    f"{total_steps}: resume with the same data and hyperparameters"
                )
            if zero:
                zero3.load_optimizer_state(model, optimizer, groups, resume.optimizer)
            elif sharded:
                fsdp.load_optimizer_state(model, optimizer, resume.optimizer)
            else:
                optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            if new_schedule:
                # The restored LambdaLR keeps this run's lambdas (its length) but the
                # saved base rate: take this run's (a continuation may set another), and
                # set the rates they give at the step reached.
                scheduler.base_lrs = [hparams.learning_rate for _ in scheduler.base_lrs]
                for group in optimizer.param_groups:
                    group["initial_lr"] = hparams.learning_rate
                scheduler.last_epoch = resume.step
                rates = [
                    base * rule(resume.step)
                    for base, rule in zip(scheduler.base_lrs, scheduler.lr_lambdas)
                ]
                for group, rate in zip(optimizer.param_groups, rates):
                    group["lr"] = rate
                scheduler._last_lr = rates
            generator.set_state(resume.order_generator)
            restore_rng(resume)
            step, tokens, elapsed_before = resume.step, resume.tokens, resume.elapsed_s
            first_epoch, first_block = resume.epoch, resume.block_start
            result.history = [StepMetrics(**h) for h in resume.history]
        matching = bool(getattr(hparams, "match_holdout", False))
        # What the monitor steers, asked (and broadcast) only where the job asks for it.
        steered = matching or bool(getattr(hparams, "sam_steer", False))
        ceilings, rho = None, hparams.sam_rho
        if steered:
            ceilings, rho = _fetch_controls(callbacks, world, matching, hparams.sam_rho)
        started = time.monotonic() - elapsed_before
        callbacks.event(
            "phase",
            "training" if resume is None else f"training, resumed at step {step}",
            total_steps=total_steps,
            method=method.name,
            # what the run does, which an accelerate launch may have chosen over the spec
            strategy=strategy if world > 1 else "ddp",
            processes=world,
        )

        def gather() -> tuple[dict, dict | None]:
            """Sharded, on every rank: the trainable weights and the optimizer state,
            whole, on rank 0 (which also loads the weights into its unsharded copy)."""
            if zero:
                weights = zero3.full_trainable_weights(model)
                optimizer_state = zero3.full_optimizer_state(model, optimizer, groups)
            else:
                weights = fsdp.full_trainable_weights(model)
                optimizer_state = fsdp.full_optimizer_state(model, optimizer)
            if whole is not None:
                load_trainable_weights(whole, weights)
            return weights, optimizer_state

        def capture(
            epoch_index: int, next_block: int, epoch_generator, gathered=None
        ) -> TrainingState:
            """The state after the current step, continuing at ``next_block``
            (``gathered``: :func:`gather`'s, sharded)."""
            if next_block >= len(forget):
                epoch_index, next_block, epoch_generator = epoch_index + 1, 0, generator
            return TrainingState(
                step=step,
                epoch=epoch_index,
                block_start=next_block,
                tokens=tokens,
                elapsed_s=time.monotonic() - started,
                total_steps=total_steps,
                history=[asdict(m) for m in result.history],
                order_generator=epoch_generator.get_state(),
                weights=gathered[0]
                if gathered
                else trainable_weights(accelerator.unwrap_model(model)),
                optimizer=gathered[1] if gathered else optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                ref_nll=ref_nll,
                **capture_rng(),
            )

        for epoch in range(first_epoch, hparams.epochs):
            if step >= total_steps:
                break
            # The epoch's draws come from this state; a resume mid-epoch draws them again.
            epoch_start_generator = torch.Generator()
            epoch_start_generator.set_state(generator.get_state())
            order = torch.randperm(len(forget), generator=generator).tolist()
            # One retain partner per forget example, drawn in forget order, so pairing does
            # not depend on how the block is cut into micro-batches.
            partners = (
                torch.randint(len(retain), (len(order),), generator=generator).tolist()
                if use_retain
                else None
            )
            start_block = first_block if epoch == first_epoch else 0
            for block_start in range(start_block, len(order), block_size):
                if step >= total_steps:
                    break
                if distributed.rank0_decides(callbacks.should_pause, world):
                    raise Paused(
                        f"paused at step {step}",
                        state=capture(
                            epoch, block_start, epoch_start_generator, gather() if sharded else None
                        ),
                    )
                block = list(range(block_start, min(block_start + block_size, len(order))))
                forget_block = [forget[order[i]] for i in block]
                retain_block = [retain[partners[i]] for i in block] if use_retain else []
                # Global denominators for the whole block, all processes together.
                denominators = {
                    "forget": {"sequence": len(forget_block), "token": _block_tokens(forget_block)},
                    "retain": {"sequence": len(retain_block), "token": _block_tokens(retain_block)},
                    "facts": {
                        "sequence": len(forget_block),
                        "token": _block_tokens(forget_block, "facts"),
                    },
                    "rest": {
                        "sequence": len(forget_block),
                        "token": _block_tokens(forget_block, "rest"),
                    },
                }
                mine, real = distributed.shard_block(block, rank, world)
                micro_batches = [
                    (mine[i : i + hparams.batch_size], real[i : i + hparams.batch_size])
                    for i in range(0, len(mine), hparams.batch_size)
                ]
                totals = {"loss": 0.0, "forget": 0.0, "retain": 0.0}
                weights: list[torch.Tensor] = []
                step_tokens = 0

                # One pass over this rank's share of the block (gradients summed over its
                # micro-batches, synced on the last), or three for a sharpness-aware step:
                # the forget loss's gradient at the weights moved up it by rho, so that the
                # forgotten state is flat and a few relearning steps cannot climb back out
                # of it (arXiv 2502.05374); the retain term keeps its gradient at the
                # weights themselves. The unmoved passes' losses are the step's. Under
                # match_holdout, an answer at its ceiling keeps only its sharpness,
                # L(w + e) - L(w): flatter, not pushed further (block_passes).
                if sharpness_aware and 0 < sam_start == step:
                    callbacks.event(
                        "phase",
                        f"sharpness-aware updates from step {step + 1} of {total_steps} "
                        f"(sam_from {hparams.sam_from:g}, sam_rho {rho:g})",
                        step=step,
                    )
                moved: list = []
                for pass_index, (forget_mode, retain_part, record) in enumerate(
                    block_passes(
                        sharpness_aware and step >= sam_start, use_retain, ceilings is not None
                    )
                ):
                    if pass_index == 1:
                        moved = sam_perturb(params, rho, hparams.sam_adaptive)
                        optimizer.zero_grad(set_to_none=True)
                    elif pass_index == 2:
                        sam_restore(moved)
                        moved = []
                    for micro_index, (micro, keep) in enumerate(micro_batches):
                        if distributed.rank0_decides(callbacks.should_cancel, world):
                            raise Cancelled(f"cancelled at step {step}")
                        sync = micro_index == len(micro_batches) - 1
                        if zero:
                            zero3.set_gradient_sync(model, sync)
                        elif sharded:
                            fsdp.set_gradient_sync(model, sync)
                        with (
                            nullcontext()
                            if sync or world == 1 or sharded
                            else accelerator.no_sync(model)
                        ):
                            parts, micro_weights, micro_tokens = _micro_step(
                                model,
                                ref_model,
                                method,
                                hparams,
                                accelerator,
                                pad_id,
                                world,
                                denominators,
                                keep=keep,
                                forget_examples=[forget[order[i]] for i in micro],
                                forget_ref=ref_nll[[order[i] for i in micro]]
                                if ref_nll is not None
                                else None,
                                retain_examples=[retain[partners[i]] for i in micro]
                                if use_retain and retain_part
                                else None,
                                companion_examples=[companions[order[i]] for i in micro]
                                if companions is not None
                                else None,
                                lora=lora,
                                forget_mode=forget_mode,
                                forget_ceiling=ceilings[[order[i] for i in micro]]
                                if ceilings is not None
                                else None,
                                context=context,
                            )
                        if not record:
                            continue
                        for key in totals:
                            totals[key] += parts[key]
                        for index, value, is_real in zip(micro, parts["forget_nll"], keep):
                            if is_real:
                                seen_forget[order[index]] = value
                        for index, value, is_real in zip(micro, parts["fact_nll"], keep):
                            if is_real:
                                seen_facts[order[index]] = value
                        for index, value, is_real in zip(micro, parts["rest_nll"], keep):
                            if is_real and value is not None:
                                seen_rest[order[index]] = value
                        for index, value, is_real in zip(micro, parts["retain_nll"], keep):
                            if is_real:
                                seen_retain[partners[index]] = value
                        if micro_weights is not None:
                            weights.append(micro_weights)
                        step_tokens += micro_tokens

                sam_restore(moved)
                if zero:  # DeepSpeed clips and steps in one call
                    grad_norm = zero3.step(model)
                elif sharded:  # the norm over every rank's shards (no clipping at inf)
                    grad_norm = accelerator.clip_grad_norm_(
                        params, hparams.max_grad_norm or math.inf
                    )
                else:
                    grad_norm = (
                        accelerator.clip_grad_norm_(params, hparams.max_grad_norm)
                        if hparams.max_grad_norm
                        else _grad_norm(params)
                    )
                # A finite loss can still give inf/NaN gradients (overflow in backward); one
                # such step corrupts every weight. fp16 is the exception: its gradient scaler
                # expects overflows, skips that step and lowers the scale.
                if accelerator.mixed_precision != "fp16" and not math.isfinite(float(grad_norm)):
                    raise NonFiniteLoss(
                        non_finite_message(
                            f"non-finite gradient norm ({float(grad_norm)}) at step {step + 1}",
                            hparams,
                            method.name,
                            accelerator.mixed_precision,
                        ),
                        param="hyperparameters",
                    )
                lr = scheduler.get_last_lr()[0]
                if not zero:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                weight = torch.cat(weights) if weights else torch.empty(0)
                # The step's metrics over all ranks: each holds its share of the block.
                sums, (weight_min,), (weight_max,) = distributed.reduce_metrics(
                    [
                        totals["loss"],
                        totals["forget"],
                        totals["retain"],
                        float(step_tokens),
                        float(weight.sum()),
                        float(weight.numel()),
                    ],
                    [float(weight.min()) if weight.numel() else math.inf],
                    [float(weight.max()) if weight.numel() else -math.inf],
                    world,
                )
                loss_sum, forget_sum, retain_sum, block_tokens, weight_sum, weight_count = sums
                tokens += int(block_tokens)
                has_weights = weight_count > 0
                metrics = StepMetrics(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch + (block_start + len(block)) / len(order),
                    loss=loss_sum,
                    forget_loss=forget_sum if hparams.forget_coeff > 0 else None,
                    retain_loss=retain_sum if use_retain else None,
                    lr=lr,
                    grad_norm=float(grad_norm),
                    weight_mean=weight_sum / weight_count if has_weights else None,
                    weight_min=weight_min if has_weights else None,
                    weight_max=weight_max if has_weights else None,
                    tokens=tokens,
                    elapsed_s=time.monotonic() - started,
                )
                result.history.append(metrics)
                if callbacks.on_step and rank == 0:
                    callbacks.on_step(metrics)
                check_step(  # a diverged run fails instead of publishing blown-up weights
                    metrics.values(),
                    result.history[0].values(),
                    hparams,
                    method.name,
                    accelerator.mixed_precision,
                    step,
                )
                next_block = block_start + block_size
                epoch_end = next_block >= len(order)
                # sam_from's step is a point of its own, as the end of a first job is
                phase_end = sharpness_aware and 0 < sam_start == step
                due = (
                    (step % evaluate_every_steps == 0 if evaluate_every_steps else epoch_end)
                    or step >= total_steps
                    or phase_end
                )
                if world > 1 and due:
                    # Rank 0 judges the point; it needs every rank's measurements.
                    seen_forget = distributed.merge_dicts(seen_forget, world)
                    seen_retain = distributed.merge_dicts(seen_retain, world)
                    seen_facts = distributed.merge_dicts(seen_facts, world)
                    seen_rest = distributed.merge_dicts(seen_rest, world)
                # Sharded, every rank gathers the point's weights into rank 0's copy.
                gathered = gather() if sharded and due else None
                stop = False
                if callbacks.on_evaluation and due and rank == 0:
                    point = EvaluationPoint(
                        step=step,
                        epoch=metrics.epoch,
                        total_steps=total_steps,
                        model=whole.to(device) if sharded else accelerator.unwrap_model(model),
                        final=step >= total_steps,
                        capture_state=functools.partial(
                            capture, epoch, next_block, epoch_start_generator, gathered
                        ),
                        forget_nll=dict(seen_forget),
                        retain_nll=dict(seen_retain),
                        fact_nll=dict(seen_facts),
                        rest_nll=dict(seen_rest),
                        sharpness_aware=sharpness_aware and step > sam_start,
                        phase_end=phase_end,
                    )
                    stop = bool(callbacks.on_evaluation(point))
                    if sharded:
                        whole.to("cpu")
                if due and distributed.rank0_decides(lambda s=stop: s, world):
                    result.stopped_early = step < total_steps
                    break
                if due and steered:
                    ceilings, rho = _fetch_controls(callbacks, world, matching, hparams.sam_rho)
            if result.stopped_early or step >= total_steps:
                break

        if sharded:
            gathered = (zero3 if zero else fsdp).full_trainable_weights(model)
            if whole is not None:
                load_trainable_weights(whole, gathered)
        # Rank 0's unsharded copy when sharded (the other ranks' shards are of no use after)
        result.model = whole.to(device) if whole is not None else accelerator.unwrap_model(model)
        result.steps, result.trained_tokens = step, tokens
        result.elapsed_s = time.monotonic() - started
        # Evaluation and saving follow in this process: drop AdamW's moments (twice the
        # trainable weights) now. Not accelerator.free_memory(): its full gc.collect()
        # took 0.3 s, a tenth of a demo-sized run, to find what this frees directly.
        getattr(optimizer, "optimizer", optimizer).state.clear()
        if zero:
            # DeepSpeed's hooks and buffers keep the partitioned model alive: release
            # them before rank 0 evaluates on its whole copy.
            model.destroy()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return result


def _fetch_controls(callbacks: Callbacks, world: int, matching: bool, sam_rho: float):
    """What the monitor steers, rank 0's on every rank: the forget answers' ceilings
    (``Callbacks.forget_ceilings``, under ``matching``) as a tensor indexed like the forget
    set (inf where none; None: no ceilings), and the sharpness-aware radius
    (``Callbacks.sam_rho``, else ``sam_rho``)."""
    import torch

    def ask():
        ceilings = callbacks.forget_ceilings() if matching and callbacks.forget_ceilings else None
        return ceilings, callbacks.sam_rho() if callbacks.sam_rho else None

    values, rho = distributed.rank0_object(ask, world)
    rho = sam_rho if rho is None else rho
    if values is None:
        return None, rho

    def value(v):
        if isinstance(v, (list, tuple)):  # forget_tokens both: (phrasing, facts)
            return [value(part) for part in v]
        return math.inf if v is None else v

    return torch.tensor([value(v) for v in values], dtype=torch.float64), rho


def _processes() -> int:
    """Processes of this run (accelerate/torchrun set WORLD_SIZE), before accelerate
    starts: the auto batch accumulation counts them."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _grad_norm(params) -> float:
    import torch

    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _forward_nll(model, examples, pad_id, device):
    output, batch = _forward(model, examples, pad_id, device)
    return output.logits, batch


def _forward(model, examples, pad_id, device, hidden: bool = False):
    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    output = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=hidden,
    )
    return output, batch


def _micro_step(
    model,
    ref_model,
    method,
    hparams,
    accelerator,
    pad_id,
    world,
    denominators,
    *,
    keep,
    forget_examples,
    forget_ref,
    retain_examples,
    companion_examples=None,
    lora,
    forget_mode: str = "push",
    forget_ceiling=None,
    context=None,
):
    """Forward + backward of one micro-batch; returns its share of the step's losses.

    ``keep`` marks the real examples: the others pad a rank's share of a short block
    (``distributed.shard_block``) and weigh zero. ``forget_mode`` (see
    :func:`block_passes`): ``push`` the answers below their ``forget_ceiling`` (a
    per-token NLL per example; every answer without one), ``all`` of them, ``settle``:
    minus the term of those at or past their ceilings, unreported, or ``off``. An
    answer past its ceiling still reports its loss; the block's denominators stay, so
    the push shrinks as the answers reach their ceilings.

    Examples with ``fact_labels`` (``forget_tokens: both``) get two forget terms from
    the same forward pass, one on their phrasing (the answer tokens that are not facts)
    and one on their fact tokens, with the two columns of ``forget_ceiling`` as their
    ceilings: each term stops at its own. ``forget_nll`` stays the whole answers'.
    """
    import torch

    device = accelerator.device
    keep_mask = torch.tensor(keep, dtype=torch.bool, device=device)
    loss = torch.zeros((), device=device)
    parts = {
        "loss": 0.0,
        "forget": 0.0,
        "retain": 0.0,
        "forget_nll": [],
        "retain_nll": [],
        "fact_nll": [],
        "rest_nll": [],
    }
    weights = None
    settle = forget_mode == "settle"
    forget_term_on = (
        forget_mode != "off"
        and hparams.forget_coeff > 0
        and not (settle and forget_ceiling is None)
    )
    n_tokens = (
        sum(len(e.input_ids) for e, real in zip(forget_examples, keep) if real)
        if forget_term_on and not settle
        else 0
    )
    unreported = 0.0
    with accelerator.autocast():
        if forget_term_on:
            output, batch = _forward(model, forget_examples, pad_id, device, method.hidden_states)
            logits = output.logits
            nll, n_answer = sequence_nll(logits, batch["labels"])
            per_token = _per_token(nll, n_answer)
            if not settle:
                parts["forget_nll"] = per_token
            companion = None
            if companion_examples:
                n_tokens += (
                    0
                    if settle
                    else sum(len(e.input_ids) for e, real in zip(companion_examples, keep) if real)
                )
                companion_logits, companion_batch = _forward_nll(
                    model, companion_examples, pad_id, device
                )
                companion = ForgetInputs(
                    *sequence_nll(companion_logits, companion_batch["labels"]),
                    logits=companion_logits,
                    labels=companion_batch["labels"],
                )
            two_columns = forget_ceiling is not None and forget_ceiling.dim() == 2
            views = [
                _ForgetView(
                    batch["labels"],
                    nll,
                    n_answer,
                    per_token,
                    forget_ceiling[:, 0] if two_columns else forget_ceiling,
                    denominators["forget"],
                    keep_mask,
                )
            ]
            if "fact_labels" in batch:
                # forget_tokens both: the answers' phrasing (the tokens that are not
                # facts) and their facts, two terms from this forward pass
                rest = _rest_view(
                    logits, batch, forget_ceiling, two_columns, denominators, keep_mask
                )
                facts = _facts_view(
                    logits, batch, forget_ceiling, two_columns, denominators, keep_mask
                )
                views = [rest, facts]
                if not settle:
                    parts["rest_nll"], parts["fact_nll"] = rest.per_token, facts.per_token
            forget_part, reported, terms, pull = 0.0, 0.0, [], 0.0
            for view in views:
                term = method.forget_term(
                    ForgetInputs(
                        nll=view.nll,
                        n_tokens=view.n_tokens,
                        ref_nll=forget_ref.to(device) if forget_ref is not None else None,
                        logits=logits,
                        labels=view.labels,
                        companion=companion,
                        hidden_states=output.hidden_states,
                        attention_mask=batch["attention_mask"],
                        context=context,
                    ),
                    hparams,
                )
                terms.append(term)
                part = _reduce(term, view.denominators, view.rows)
                reported = reported + part.detach()
                if view.ceiling is not None and forget_mode in ("push", "settle"):
                    measured = [math.inf if v is None else v for v in view.per_token]
                    below = torch.tensor(measured, dtype=torch.float64) < view.ceiling
                    chosen = (~below if settle else below).to(device)
                    part = _reduce(term, view.denominators, view.rows & chosen)
                elif settle:  # a term without ceilings has no answer at one
                    part = part * 0
                forget_part = forget_part + part
                # under both, the phrasing only (views[0]): facts past their ceilings
                # stay there (hyperparameters.match_pull says why)
                if view is views[0] and forget_mode in ("push", "settle"):
                    pull = pull + pulled_back(view, getattr(hparams, "match_pull", 0.0))
            if not settle:
                parts["forget"] = float(reported)
            if settle:
                forget_part = -forget_part
                unreported = float(hparams.forget_coeff * forget_part.detach())
            loss = loss + hparams.forget_coeff * forget_part + pull
            # the whole answers' weights (the step's figures are the whole answers')
            weights = (
                terms[0].gradient_weight.detach()[keep_mask].float().cpu()
                if terms[0].gradient_weight is not None and not settle
                else None
            )
        if retain_examples:
            n_tokens += sum(len(e.input_ids) for e, real in zip(retain_examples, keep) if real)
            retain_part, parts["retain_nll"] = _retain_term(
                model,
                ref_model,
                hparams,
                retain_examples,
                pad_id,
                device,
                lora,
                denominators,
                keep_mask,
            )
            loss = loss + hparams.retain_coeff * retain_part
            parts["retain"] = float(retain_part.detach())
    # Every rank asks, so that a NaN on one of them stops all (none is left waiting in
    # the backward pass's all-reduce).
    bad_ranks = distributed.ranks_where(not bool(torch.isfinite(loss)), world)
    if bad_ranks:
        shown = f" ({float(loss.detach())})" if not torch.isfinite(loss) else ""
        where = f" on rank {', '.join(map(str, bad_ranks))}" if world > 1 else ""
        raise NonFiniteLoss(
            non_finite_message(
                f"non-finite loss{shown}{where}",
                hparams,
                method.name,
                accelerator.mixed_precision,
            ),
            param="hyperparameters",
        )
    parts["loss"] = float(loss.detach()) - unreported
    # DDP averages gradients over processes; the denominators are already global.
    if zero3.is_engine(model):  # ZeRO-3 reduces and partitions gradients in its own
        model.backward(loss * world)
    else:
        accelerator.backward(loss * world)
    return parts, weights, n_tokens


#: ASAM's eta: keeps a zero weight movable (the paper's value)
ASAM_ETA = 0.01


def sam_perturb(params, rho: float, adaptive: bool = False) -> list:
    """Move every trainable weight by ``rho * g / ||g||`` (g: its gradient now, the
    same on every rank after the sync), or, ``adaptive``, by ``rho * T^2 g / ||T g||``
    with ``T = |w| + eta`` (ASAM: a step relative to each weight's size); returns what
    :func:`sam_restore` needs to put the weights back exactly (a copy: subtracting the
    move again would round). A zero or non-finite gradient moves nothing."""
    import torch

    live = [p for p in params if p.grad is not None]
    if not live:
        return []
    with torch.no_grad():
        scale = [p.detach().abs() + ASAM_ETA if adaptive else None for p in live]
        scaled = [p.grad if t is None else p.grad * t for p, t in zip(live, scale)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in scaled]))
        if not torch.isfinite(norm) or float(norm) == 0.0:
            return []
        saved = []
        for p, t, g in zip(live, scale, scaled):
            saved.append((p, p.detach().clone()))
            p.add_((g if t is None else g * t) * (rho / norm))
    return saved


def block_passes(
    sharpness_aware: bool, use_retain: bool, ceilings: bool = False
) -> list[tuple[str, bool, bool]]:
    """A step's passes over its block: (forget mode, retain term, its losses recorded).

    Forget modes (``_micro_step``): ``push`` the answers below their ceilings (all,
    without ceilings), ``all``, ``settle`` (minus those at or past their ceilings), ``off``.
    A sharpness-aware step with ceilings takes every answer's gradient at the moved
    weights and then subtracts, at the weights themselves, that of the answers already
    at their ceilings: those keep only their sharpness ``L(w + e) - L(w)`` (flatter, so
    a relearning attack climbs back less, without being pushed past unseen data)."""
    if not sharpness_aware:
        return [("push", True, True)]
    if ceilings:
        return [("all", False, True), ("all", False, False), ("settle", use_retain, True)]
    passes = [("push", False, True), ("push", False, False)]
    return passes + [("off", True, True)] if use_retain else passes


def sam_restore(saved: list) -> None:
    import torch

    with torch.no_grad():
        for p, original in saved:
            p.copy_(original)


def _reduce(term: LossTerm, denominators: dict[str, int], keep):
    return _masked_sum(term.per_sequence, keep) / denominators[term.reduction]


def _masked_sum(per_sequence, keep):
    """Sum over the real examples; padding weighs zero (``where``, not a product, so that
    a padding copy's inf cannot turn the sum into NaN)."""
    import torch

    return torch.where(keep, per_sequence, torch.zeros_like(per_sequence)).sum()


def _retain_term(model, ref_model, hparams, examples, pad_id, device, lora, denominators, keep):
    import torch

    activations = hparams.retain_loss == "activations"
    output, batch = _forward(model, examples, pad_id, device, hidden=activations)
    logits = output.logits
    if hparams.retain_loss == "nll":
        nll, n_answer = sequence_nll(logits, batch["labels"])
        return _masked_sum(nll, keep) / denominators["retain"]["token"], _per_token(nll, n_answer)
    with torch.no_grad():
        per_token = _per_token(*sequence_nll(logits.detach(), batch["labels"]))
        inputs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "output_hidden_states": activations,
        }
        if ref_model is None:
            with _unwrap(model).disable_adapter():
                reference = model(**inputs)
        else:
            reference = ref_model(**inputs)
    if activations:
        from core.methods.rmu import retain_activations

        distance = retain_activations(
            output.hidden_states, reference.hidden_states, batch["attention_mask"], hparams
        )
        return _masked_sum(distance, keep) / denominators["retain"]["sequence"], per_token
    kl = _masked_sum(answer_kl(logits, reference.logits, batch["labels"]), keep)
    kl = kl / denominators["retain"]["token"]
    return kl, per_token


class _ForgetView(NamedTuple):
    """One forget term's tokens in a micro-batch: its labels, per-sequence NLL and answer
    tokens, the per-token NLL reported to the monitor (None: no such tokens), its
    ceilings, the block's denominators and the rows it applies to."""

    labels: torch.Tensor
    nll: torch.Tensor
    n_tokens: torch.Tensor
    per_token: list[float | None]
    ceiling: torch.Tensor | None
    denominators: dict[str, int]
    rows: torch.Tensor


def _facts_view(logits, batch, forget_ceiling, two_columns, denominators, keep_mask):
    """``forget_tokens: both``'s second term: the answers' fact tokens (the whole answer
    where it has none), with the second column of the ceilings."""
    fact_nll, fact_n = sequence_nll(logits, batch["fact_labels"])
    return _ForgetView(
        batch["fact_labels"],
        fact_nll,
        fact_n,
        _per_token(fact_nll, fact_n),
        forget_ceiling[:, 1] if two_columns else None,
        denominators["facts"],
        keep_mask,
    )


def _rest_view(logits, batch, forget_ceiling, two_columns, denominators, keep_mask):
    """``forget_tokens: both``'s first term: the answer tokens that are not facts, with
    the first column of the ceilings. An answer whose every token is a fact (it has no
    rare word: its facts are the whole answer) has no such term; its row keeps its whole
    answer's labels, so that every method's term stays finite, and is left out, and its
    per-token NLL is reported as None."""
    import torch

    labels = batch["labels"]
    is_fact = batch["fact_labels"] != IGNORE_INDEX
    has_rest = ((labels != IGNORE_INDEX) & ~is_fact).any(dim=1)
    rest_labels = torch.where(has_rest[:, None] & is_fact, IGNORE_INDEX, labels)
    rest_nll, rest_n = sequence_nll(logits, rest_labels)
    per_token = [
        value if rest else None
        for value, rest in zip(_per_token(rest_nll, rest_n), has_rest.tolist())
    ]
    return _ForgetView(
        rest_labels,
        rest_nll,
        rest_n,
        per_token,
        forget_ceiling[:, 0] if two_columns else forget_ceiling,
        denominators["rest"],
        keep_mask & has_rest.to(keep_mask.device),
    )


def pulled_back(view: _ForgetView, weight: float):
    """``match_pull``: ``weight`` x the block-mean of how far each answer's per-token NLL
    lies past its ceiling (a hinge), so that its gradient lowers the NLL of over-forgotten
    answers until they are back at their ceilings and does nothing to the others. Taken
    in the passes at the weights themselves (``push``; ``settle`` under sharpness-aware
    steps), so once per step."""
    import torch

    if weight <= 0 or view.ceiling is None:
        return 0.0
    per_token = view.nll / view.n_tokens.clamp_min(1)
    ceiling = view.ceiling.to(device=per_token.device, dtype=per_token.dtype)
    rows = view.rows & torch.isfinite(ceiling) & (view.n_tokens > 0)
    # _masked_sum drops the other rows by where, so their inf never reaches the sum
    past = (per_token - ceiling).clamp_min(0)
    return weight * _masked_sum(past, rows) / view.denominators["sequence"]


def _per_token(nll, n_answer) -> list[float]:
    """Per-token NLL of each sequence, for the measurements between evaluation points."""
    return (nll.detach().float() / n_answer.clamp_min(1)).cpu().tolist()
