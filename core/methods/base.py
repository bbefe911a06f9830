"""What every unlearning method shares: the hyperparameter schema and the loss-term shape.

A method is one module (``core/methods/<name>.py``) holding its hyperparameter schema,
its pure ``forget_loss`` and a :class:`Method` entry in the registry. The training loop
is shared by all of them. torch is imported inside functions so that the API can read
the schemas without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    import torch


class TrainingHyperparameters(BaseModel):
    """Optimizer, schedule and batching; shared by every method and by fine-tuning.

    Defaults follow the reference setups for 7B models (AdamW, 10 epochs, effective batch
    32, 1 warm-up epoch of 10); the learning rate defaults to ``auto``, which scales the
    7B reference (1e-5) to the model's width.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    learning_rate: float | Literal["auto"] = Field(
        "auto",
        description="Peak AdamW learning rate, or auto: 0.04 / the model's hidden size "
        "(x10 for LoRA), the muP scaling of the 7B reference rate 1e-5 "
        "(core.training.auto).",
        # Numeric keywords apply to the number branch only; the validator below
        # enforces them with a message naming both forms.
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 1.0},
    )
    epochs: int = Field(10, ge=1, le=1000, description="Passes over the forget set.")
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="Stop after this many optimizer steps."
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Forget examples per micro-batch.")
    gradient_accumulation_steps: int | Literal["auto"] = Field(
        "auto",
        description="Micro-batches per optimizer step (1-1024), or auto: about 8 steps per "
        "epoch, at most the reference effective batch of 32 (core.training.auto).",
        json_schema_extra={"minimum": 1, "maximum": 1024},
    )
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps warming up.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Schedule after warm-up."
    )
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null: none.")
    max_length: int = Field(512, ge=8, le=131072, description="Tokens per sequence.")
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16-pure"] = Field(
        "auto",
        description="auto: bf16 where the GPU supports it, else fp32. bf16 and fp16 are "
        "mixed precision (fp32 master weights, low-precision autocast); bf16-pure keeps the "
        "weights themselves in bf16 (half the weight memory; small updates may round away).",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate_bounds(cls, value):
        if value != "auto" and not 0 < value <= 1.0:
            raise ValueError("must be greater than 0 and at most 1, or 'auto'")
        return value

    @field_validator("gradient_accumulation_steps")
    @classmethod
    def _accumulation_bounds(cls, value):
        if value != "auto" and not 1 <= value <= 1024:
            raise ValueError("must be from 1 to 1024, or 'auto'")
        return value

    @property
    def effective_batch_size(self) -> int:
        if self.gradient_accumulation_steps == "auto":
            raise ValueError("gradient_accumulation_steps is still 'auto': resolve it first")
        return self.batch_size * self.gradient_accumulation_steps


#: ``sam_steer``'s starting radius where the job sets none: the radius that met the most
#: seeds of the 30-author benchmark unsteered (docs/minitofu.md)
SAM_STEER_START = 0.3


def one_term_forget_tokens():
    """``forget_tokens`` of a method whose forget term needs more than the answers' own
    likelihood (a reference model's, a companion's): ``both``'s second term would need
    those for the fact tokens too, so it offers one term only."""
    return Field(
        "answer",
        description="Which answer tokens the forget loss (and match_holdout's ceilings) "
        "see: answer: all of them; facts: those of the answer's rare words (in fewer than "
        "4% of the job's answers) that its question does not hold. Needs a fast tokenizer.",
    )


class UnlearningHyperparameters(TrainingHyperparameters):
    """Adds the forget/retain weighting every unlearning method has."""

    forget_coeff: float = Field(1.0, ge=0, le=1000, description="Weight of the forget loss.")
    retain_coeff: float = Field(
        1.0, ge=0, le=1000, description="Weight (lambda) of the retain loss."
    )
    retain_loss: Literal["nll", "kl", "none"] = Field(
        "nll",
        description="Retain term: NLL on retain answers, KL to the original model on retain "
        "answers, or none.",
    )
    sam_rho: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Sharpness-aware unlearning (arXiv 2502.05374): the forget loss's "
        "gradient is taken at the weights moved by sam_rho along its normalized gradient, "
        "so that the forgotten state is flat and a few relearning steps do not undo it; "
        "0: off. Costs a second forward and backward of the forget batch.",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "two_phase"] = Field(
        "linear",
        description="Schedule after warm-up. two_phase: the schedule of a job continued "
        "with sharpness-aware epochs, in one job: warm-up and linear decay to zero by "
        "sam_from's step (the plain steps), then the whole budget's linear decay from "
        "where it stands there (the sharpness-aware steps); linear where sam_from is 0.",
    )
    sam_adaptive: bool = Field(
        False,
        description="Adaptive sharpness (ASAM, arXiv 2102.11600): scale each weight's move "
        "by its own size (|w| + 0.01), so that sam_rho is a relative step and means the "
        "same on a small model as on a large one (ASAM's rho is typically 0.5-2).",
    )
    sam_steer: bool = Field(
        False,
        description="With a target: the evaluation points steer the sharpness-aware "
        "radius, starting from sam_rho (0.3 where sam_rho is left at 0): a verdict probe "
        "whose utility is below the floor lowers it by a third, one whose relearning "
        "check fails raises it by half, within 0.5-3x the start, and brings the next "
        "probe to the next evaluation point. "
        "Each change is an event (type steer) and each point records the radius it "
        "trained with.",
    )

    sam_from: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="The share of the budget's steps trained with plain updates before "
        "the sharpness-aware ones (sam_rho) begin: forget first, then flatten what was "
        "forgotten, in one job (0: sharpness-aware from the first step). Under sam_steer "
        "the radius is steered only from then on. Without sam_rho or sam_steer there are "
        "no sharpness-aware steps and it changes nothing.",
    )

    match_holdout: bool = Field(
        False,
        description="Distribution-matched forgetting (needs a target and a holdout set): "
        "each forget answer is pushed only while it is likelier than the holdout answer of "
        "the same rank (the holdout's likelihoods under the current weights, measured at "
        "the last evaluation point), so that the forget set's likelihoods approach unseen "
        "data's instead of falling past them (over-forgetting, which the two-sided "
        "membership check refuses). Before the first evaluation point every answer is "
        "pushed.",
    )
    match_shift: float = Field(
        0.0,
        ge=0,
        le=0.2,
        description="With match_holdout: how far past the holdout's likelihoods the forget "
        "answers are pushed, as a shift of the holdout quantile each answer is matched to: "
        "0 aims at membership AUC 0.5, 0.15 at about 0.35 (inside the two-sided band "
        "0.3-0.7), for forgetting that needs more than the answers' own likelihood.",
    )

    match_pull: float = Field(
        0.0,
        ge=0,
        le=10,
        description="With match_holdout: answers already past their ceiling (less likely "
        "than the unseen answer of the same rank: over-forgotten, which the two-sided "
        "membership check refuses as it refuses remembering) are pulled back to it, by "
        "this weight times how far past it their per-token NLL lies (a hinge: nothing at "
        "or below the ceiling). 0: they are only left alone, and Adam's momentum, "
        "sharpness-aware steps and the pushes of other answers can take them further. "
        "Under forget_tokens both, the phrasing only: facts past their ceilings stay "
        "there, since pulling them back lowered the knowledge test's p-value and the "
        "oracle's forget quality on the 30-author benchmark while the whole answers' "
        "membership follows their phrasing. Needs match_holdout (its ceilings are what "
        "answers are pulled back to).",
    )

    @field_validator("match_pull")
    @classmethod
    def _pull_needs_matching(cls, value: float, info):
        # declared after match_holdout so that it is in info.data
        if value > 0 and not info.data.get("match_holdout"):
            raise ValueError(
                "pulls answers back to their match_holdout ceilings, but there are none "
                "(match_holdout is false): set match_holdout: true, or match_pull 0"
            )
        return value

    forget_tokens: Literal["answer", "facts", "both"] = Field(
        "answer",
        description="Which answer tokens the forget loss (and match_holdout's ceilings) "
        "see: answer: all of them; facts: those of the answer's rare words (in fewer than "
        "4% of the job's answers) that its question does not hold, e.g. Braedrum in "
        "'X was born in the city of Braedrum.', since the knowledge test compares the "
        "right value with wrong ones in the same phrasing; both: two forget losses, one on "
        "the answer's facts and one on the rest of it (its phrasing), each with its own "
        "match_holdout ceiling (the facts matched to the holdout answers' facts, the "
        "phrasing to theirs), so that neither a memorized fact nor memorized phrasing is "
        "left and neither part is pushed past unseen data's. Needs a fast tokenizer; an "
        "answer without a rare word keeps every token (as its facts).",
    )

    @model_validator(mode="after")
    def _steered_radius_starts(self):
        if self.sam_steer and self.sam_rho == 0:
            self.sam_rho = SAM_STEER_START
        return self

    @model_validator(mode="after")
    def _some_loss(self):
        if self.forget_coeff == 0 and (self.retain_loss == "none" or self.retain_coeff == 0):
            raise ValueError("forget_coeff and retain term are both zero: nothing to train")
        return self


@dataclass
class ForgetInputs:
    """Per-sequence statistics of a forget micro-batch (all shape ``[B]``)."""

    nll: torch.Tensor  # summed answer-token NLL under the current model
    n_tokens: torch.Tensor  # answer tokens per sequence
    ref_nll: torch.Tensor | None = None  # summed NLL under the model before unlearning
    #: logits ``[B, T, V]`` and labels ``[B, T]`` of the batch (LoKU's token-level loss)
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    #: the same for each example's companion (FLAT's template answer to the same
    #: prompt), when the method builds companions
    companion: ForgetInputs | None = None
    #: every layer's output (``hidden_states``: embeddings first) and the real tokens'
    #: mask ``[B, T]``, for a method with ``hidden_states`` (RMU)
    hidden_states: tuple | None = None
    attention_mask: torch.Tensor | None = None
    #: what the method's ``prepare`` built before training (RMU's control vector)
    context: object | None = None


@dataclass
class LossTerm:
    """A batch loss kept per sequence, with how to average it.

    ``reduction`` is ``"sequence"`` (mean over sequences) or ``"token"`` (sum over
    sequences divided by answer tokens). Keeping the numerator apart lets the loop divide
    by the whole effective batch (all micro-batches, all processes), so batch 8 x
    accumulation 1 and batch 2 x accumulation 4 give the same update.
    ``gradient_weight`` (detached) is the per-sample factor that multiplies the gradient
    of ``-nll`` (gradient ascent) in the batch-mean gradient; the SimNPO paper analyses it.
    """

    per_sequence: torch.Tensor
    reduction: Literal["sequence", "token"]
    n_tokens: torch.Tensor | None = None
    gradient_weight: torch.Tensor | None = None

    def mean(self) -> torch.Tensor:
        if self.reduction == "sequence":
            return self.per_sequence.mean()
        return self.per_sequence.sum() / self.n_tokens.sum()


#: What a job of a method publishes (``output`` in GET /v1/methods): new weights, or a
#: guard applied at decoding time (``core.methods.guard_spec``).
MethodOutput = Literal["weights", "guard"]

#: The consequences of each output, for whoever picks a method.
OUTPUT_DESCRIPTIONS: dict[str, str] = {
    "weights": "New weights: a checkpoint (or LoRA adapter) registered as a model under "
    "the job's id. A succeeded job whose forgetting verdict is forgotten fulfils the "
    "deletion request it serves (once every job linked to the request has ended).",
    "guard": "A guard, not weights: guard.json and a prompt classifier, served as the "
    "model variant <model>+<job id> on /openai/v1, which keeps the forget answers out of "
    "generated text. The weights do not change and the data stays in them, so a guard "
    "does not fulfil a deletion request on its own: a request whose only succeeded job "
    "is a guard ends needs_attention until an unlearning job proves forgetting.",
}


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    description: str
    hyperparameters: type[UnlearningHyperparameters]
    forget_term: Callable[[ForgetInputs, UnlearningHyperparameters], LossTerm]
    needs_reference_nll: bool = False
    paper: str | None = None
    #: ``companions(forget, tokenizer, hparams, seed)``: one more example per forget
    #: example, scored beside it in every forget forward (FLAT: a template answer to the
    #: same prompt); built once before training
    companions: Callable | None = None
    #: the forget forward pass returns every layer's output (``ForgetInputs.hidden_states``)
    hidden_states: bool = False
    #: ``prepare(model, forget, pad_id, hparams, seed, device)``: built once from the
    #: original weights before training (and again, the same, on resume), handed to the
    #: forget term as ``ForgetInputs.context``
    prepare: Callable | None = None
    #: ``trainable(model, hparams)``: freezes what the method leaves alone (after LoRA is
    #: applied, before the optimizer is built)
    trainable: Callable | None = None
    #: every training method publishes new weights
    output: MethodOutput = "weights"

    def parse_hyperparameters(self, values: dict | None) -> UnlearningHyperparameters:
        return self.hyperparameters.model_validate(values or {})
