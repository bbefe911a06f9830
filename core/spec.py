"""The job specification: one schema for the REST API body, the CLI's YAML/JSON job
files and the worker.

Data and model references are strings resolved where the job runs:
- data: a dataset id (``ds_...``, uploaded through the API), a local path (CLI), or an
  object-store URL (``s3://bucket/key``, ``file:///...``);
- model: a registered model name (``demo-target``, a finished job's output), a local
  folder, an object-store URL, or a Hugging Face hub id.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from core.data.templates import TEMPLATE_PATTERN, check_template
from core.errors import InvalidRequest
from core.methods import DEFAULT_METHOD, get_method
from core.methods.base import UnlearningHyperparameters
from core.methods.guard_spec import GUARD_METHOD, GuardHyperparameters

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
#: the truth-ratio p-value (the smaller of KS and Mann-Whitney, the latter counted for forget
#: ratios below the holdout's) at or above which forget
#: and holdout count as alike
VERDICT_FORGET_THRESHOLD = 0.2
# Keys are matched as JSON paths by the job list's metadata filter: no quotes, brackets,
# spaces or other path syntax.
METADATA_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
METADATA_VALUE_MAX = 512
METADATA_KEY_RULE = (
    "keys are 1-64 characters of A-Z a-z 0-9 _ . : - (letters, digits, underscore, dot, "
    "colon, hyphen)"
)
METADATA_VALUE_RULE = f"values are at most {METADATA_VALUE_MAX} characters"
METADATA_MAX_KEYS = 16
METADATA_DESCRIPTION = (
    f"Free-form labels (max {METADATA_MAX_KEYS} keys): {METADATA_KEY_RULE}; {METADATA_VALUE_RULE}."
)
#: The same bounds as JSON Schema keywords, for the OpenAPI document.
METADATA_JSON_SCHEMA = {
    "propertyNames": {"pattern": f"^{METADATA_KEY.pattern}$"},
    "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX},
}


def metadata_problem(key: str, value: str) -> str | None:
    """What is wrong with one metadata entry (the key or the value), or None."""
    if not METADATA_KEY.fullmatch(key):
        return f"key {key!r}: {METADATA_KEY_RULE}"
    if len(value) > METADATA_VALUE_MAX:
        return f"value of {key!r} has {len(value)} characters: {METADATA_VALUE_RULE}"
    return None


def check_metadata(value: dict[str, str]) -> dict[str, str]:
    """The bounds of every ``metadata`` field (jobs, deletion requests); a pydantic
    validator, so it raises ValueError."""
    for key, item in value.items():
        problem = metadata_problem(key, item)
        if problem:
            raise ValueError(problem)
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraSpec(StrictModel):
    """Train low-rank adapters (peft) instead of all weights."""

    r: int = Field(8, ge=1, le=1024, description="Adapter rank.")
    alpha: float = Field(16, gt=0, le=4096, description="Adapter scaling numerator.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Adapter dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all linear layers."
    )
    merge: bool = Field(False, description="Also publish the merged full model.")
    init: Literal["default", "fila"] = Field(
        "default",
        description="default: peft's (B = 0); fila: LoKU's Fisher-weighted initialisation, "
        "adapters start on the directions that matter most for the forget set.",
    )


class RelearnSpec(StrictModel):
    """Relearning attack: briefly fine-tune the unlearned model on part of the forget set
    and measure how much comes back."""

    steps: int = Field(10, ge=1, le=10_000, description="Optimizer steps of the attack.")
    fraction: float = Field(0.5, gt=0, le=1, description="Share of the forget set used.")
    learning_rate: float = Field(1e-5, gt=0, le=1, description="Attack learning rate.")
    batch_size: int = Field(8, ge=1, le=1024, description="Attack batch size.")


#: At most this many oracles pool their truth ratios (each is evaluated, or read, once).
MAX_ORACLES = 8

#: The evaluation settings that name a dataset (``utility`` is a list of them; ``oracle``
#: names a model).
EVALUATION_DATASET_FIELDS = ("forget", "retain", "holdout", "knowmem_forget", "knowmem_retain")


class EvaluationSpec(StrictModel):
    """What the before/after report measures. Every set defaults to what the job has."""

    enabled: bool = Field(True, description="Evaluate the model before and after unlearning.")
    forget: str | None = Field(
        None,
        description="Forget-side eval data (with paraphrased/perturbed answers); "
        "default: the forget set.",
    )
    retain: str | None = Field(None, description="Retain-side eval data; default: the retain set.")
    holdout: str | None = Field(
        None, description="Data never trained on, for membership inference (AUC, PrivLeak)."
    )
    utility: list[str] = Field(
        default_factory=list, description="Extra utility sets (e.g. world facts).", max_length=8
    )
    oracle: str | Annotated[list[str], Field(min_length=1, max_length=MAX_ORACLES)] | None = Field(
        None,
        description="A model never trained on the forget set (retrain), for forget "
        "quality; or 'job:<id>' to reuse the stored statistics of an earlier evaluation. "
        "A list of them (retrains of other seeds) pools their forget truth ratios: forget "
        "quality then compares against several draws of perfect forgetting, not one "
        "retrain's seed; PrivLeak, the relearning comparison and the oracle's own checks "
        "use the first.",
    )
    max_samples: int = Field(400, ge=1, le=100_000, description="Cap per evaluation set.")
    generate: bool = Field(True, description="Greedy generation for ROUGE-L.")
    max_new_tokens: int = Field(64, ge=1, le=1024, description="Generation length for ROUGE-L.")
    batch_size: int = Field(32, ge=1, le=1024, description="Evaluation batch size.")
    relearn: RelearnSpec | None = Field(None, description="Run a relearning attack.")
    knowmem_forget: str | None = Field(
        None,
        description="Question/answer set about a raw-text forget set (MUSE KnowMem); a "
        "question/answer forget set is used directly.",
    )
    knowmem_retain: str | None = Field(
        None, description="Question/answer set about a raw-text retain set (MUSE KnowMem)."
    )
    sample_seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of the subsample when a set exceeds max_samples."
    )
    min_k_fraction: float = Field(
        0.4, gt=0, le=1, description="k of the Min-K% and Min-K%++ membership attacks."
    )
    knowmem_max_new_tokens: int = Field(
        32, ge=1, le=1024, description="Answer length scored by KnowMem (ROUGE-L F1)."
    )
    verbmem_prefix_tokens: int = Field(
        32, ge=1, le=4096, description="Tokens of each forget text given as VerbMem prompt."
    )
    verbmem_max_new_tokens: int = Field(
        128, ge=1, le=4096, description="Continuation length scored by VerbMem."
    )
    store_generations: bool | None = Field(
        None,
        description="Keep the generated answers in the per-sample results (report.json); "
        "they may reproduce the very data being forgotten. Default: true, but false for a "
        "job that serves a deletion request (its report keeps figures, not the text).",
    )

    @field_validator("oracle", mode="before")
    @classmethod
    def _oracles_are_a_reference_or_a_short_list(cls, value: Any) -> Any:
        # Before the union's own validation, whose errors name its branches
        # ("oracle.str: Input should be a valid string" for an empty list).
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(each, str) for each in value):
            raise ValueError("give a model reference, 'job:<id>', or a list of such strings")
        if not 1 <= len(value) <= MAX_ORACLES:
            raise ValueError(f"give 1 to {MAX_ORACLES} oracles, not {len(value)}")
        if len(set(value)) < len(value):
            raise ValueError("an oracle is listed twice (pooling it would count it twice)")
        return value

    @property
    def oracles(self) -> list[str]:
        """The oracle references in order (the first is the one PrivLeak, the relearning
        comparison and the oracle's checks use); empty without one."""
        if self.oracle is None:
            return []
        return [self.oracle] if isinstance(self.oracle, str) else list(self.oracle)

    def oracle_param(self, index: int) -> str:
        """The field an error about the ``index``-th oracle names."""
        return "evaluation.oracle" if isinstance(self.oracle, str) else f"evaluation.oracle.{index}"


class TargetSpec(StrictModel):
    """Train until the forget set is verifiably forgotten, with utility above a floor.

    At every evaluation point the job measures a cheap probe (no generation) and asks
    the verdict (``core.evaluation.verdict``): does the model treat the forget set like
    the holdout set, data of the same form it never trained on? The job stops at the
    first point where it does with utility at or above ``utility_floor`` x the
    original's; if the budget runs out first it publishes the best point (the rule is
    ``core.training.target.select_point``) and says ``target_met: false``.
    """

    utility_floor: float = Field(
        0.95,
        ge=0,
        le=2,
        description="Lowest acceptable model utility, as a fraction of the original model's.",
    )
    max_epochs: int = Field(
        20, ge=1, le=1000, description="Budget: passes over the forget set at most."
    )
    eval_every_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Evaluation points every N optimizer steps; default: every epoch.",
    )
    forget_threshold: float = Field(
        VERDICT_FORGET_THRESHOLD,
        gt=0,
        lt=1,
        description="p-value at or above which the forget and holdout sets count as alike "
        "(the smaller p-value of a two-sample KS test and a Mann-Whitney test counted for "
        "forget ratios below the holdout's, of the model's own truth ratios).",
    )
    membership: Literal["one_sided", "two_sided"] = Field(
        "two_sided",
        description="two_sided: forget answers still likelier than unseen data fail the "
        "verdict, and so do far less likely ones (over-forgetting: their removal is "
        "detectable, and there the knowledge test called models forgotten that the oracle "
        "did not, docs/verdict.md); one_sided: over-forgetting is only flagged.",
    )
    relearning: bool = Field(
        True,
        description="Include the relearning check: after a short fine-tune on part of the "
        "forget set, the rest must stay as unlikely as holdout data.",
    )
    confirm_points: int = Field(
        2,
        ge=1,
        le=10,
        description="Evaluation points in a row whose verdict must say forgotten before the "
        "target counts as met: the knowledge test on ~100 records is noisy, and one passing "
        "point can be luck (docs/verdict.md). 1 trusts a single point.",
    )
    stop_when_met: bool = Field(
        True,
        description="End at the first point that meets the target; false: spend the whole "
        "budget and publish the best point.",
    )


#: The most GPUs one job may ask for: one worker slot on one host (8 on HGX/DGX nodes).
MAX_JOB_GPUS = 8


#: How a job's processes share the model (docs/distributed.md).
STRATEGIES = ("ddp", "fsdp", "deepspeed")

#: Strategies whose processes each hold a shard of the training state: what their
#: sharded gradients cannot do is refused at submission (``JobSpec.validated``).
SHARDED_STRATEGIES = ("fsdp", "deepspeed")


class ResourcesSpec(StrictModel):
    """What a job needs from the worker that runs it. The API publishes the job to the
    queue for its GPU count (``core.queue.queue_for``); only workers whose GPU slots
    have that many devices listen there."""

    gpus: int = Field(
        1,
        ge=1,
        le=MAX_JOB_GPUS,
        description="GPUs the job runs on (one worker slot of this many devices); more "
        "than 1 runs the job in that many data-parallel processes (docs/distributed.md).",
    )
    strategy: str = Field(
        "ddp",
        description="How processes share the job: ddp (every process holds the whole model "
        "and a share of each batch), fsdp (every process holds a shard of the weights, "
        "gradients and optimizer state, for models whose training state does not fit one "
        "GPU; rank 0 still gathers the whole weights to evaluate and save) or deepspeed "
        "(DeepSpeed ZeRO-3: the same partitioning as fsdp, through DeepSpeed; the worker "
        "needs the deepspeed package). All give the same result. fsdp and deepspeed refuse "
        "precision fp16 and sam_rho, and deepspeed bf16-pure full fine-tuning, with "
        "unsupported_strategy.",
        json_schema_extra={"enum": list(STRATEGIES)},
    )


class JobSpec(StrictModel):
    kind: Literal["unlearn", "finetune"] = Field(
        "unlearn",
        description="unlearn: make the model forget `forget`; finetune: train on `train` "
        "(e.g. a retrain oracle without the forget set, from the same base and recipe).",
    )
    model: str = Field(..., min_length=1, max_length=2048, description="Base model reference.")
    forget: str | None = Field(
        None, min_length=1, max_length=2048, description="Forget set reference (unlearn)."
    )
    train: str | None = Field(
        None, min_length=1, max_length=2048, description="Training set reference (finetune)."
    )
    retain: str | None = Field(None, max_length=2048, description="Retain set reference.")
    method: str = Field(
        DEFAULT_METHOD,
        description="Unlearning method (GET /v1/methods), or guard: a generation-time guard "
        "instead of new weights (docs/inference.md).",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Method hyperparameters; defaults per method."
    )
    lora: LoraSpec | None = Field(None, description="LoRA instead of full fine-tuning.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    prompt_template: str = Field(
        DEFAULT_PROMPT_TEMPLATE,
        max_length=4096,
        description="Used when the tokenizer has no chat template: text with the placeholder "
        "{question} and no other; {{ and }} are literal braces.",
        json_schema_extra={"pattern": TEMPLATE_PATTERN},
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for data order and init.")
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description=METADATA_DESCRIPTION,
        max_length=METADATA_MAX_KEYS,
        json_schema_extra=METADATA_JSON_SCHEMA,
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    deletion_request: str | None = Field(
        None,
        max_length=64,
        description="Id of the deletion request this job serves (POST /v1/deletion-requests); "
        "the request then lists the job and its evidence.",
    )
    target: TargetSpec | None = Field(
        default_factory=TargetSpec,
        description="Train until verifiably forgotten (the default); null: run the "
        "hyperparameters' fixed recipe and only report.",
    )
    continue_from: str | None = Field(
        None,
        max_length=64,
        description="Id of an earlier job of the same kind, data and method to continue "
        "from its last evaluation point (e.g. with a larger target.max_epochs). The "
        "hyperparameters set here apply to the added steps (e.g. sam_rho, or a hand-set "
        "learning_rate); values the earlier job decided automatically, and its "
        "gradient_accumulation_steps (the data position), stay as they were.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_is_safe(cls, value: str) -> str:
        return check_template(value)

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str]) -> dict[str, str]:
        return check_metadata(value)

    @property
    def primary_data(self) -> str:
        """The set the job trains on: the forget set, or the fine-tuning set."""
        return self.forget if self.kind == "unlearn" else self.train

    def _method_trains_part(self) -> bool:
        """Whether the job's method freezes part of the model (RMU)."""
        if self.kind == "finetune" or self.method == GUARD_METHOD:
            return False
        return get_method(self.method).trainable is not None

    def method_hyperparameters(self) -> UnlearningHyperparameters:
        """The method's validated hyperparameters, defaults filled in."""
        if self.kind == "finetune":
            from core.training.finetune import FinetuneHyperparameters

            try:
                return FinetuneHyperparameters.model_validate(self.hyperparameters)
            except ValidationError as exc:
                raise invalid_request_from(exc, prefix="hyperparameters") from None
        if self.method == GUARD_METHOD:
            return self._guard_hyperparameters()
        method = get_method(self.method)
        try:
            hparams = method.parse_hyperparameters(self.hyperparameters)
        except ValidationError as exc:
            raise invalid_request_from(exc, prefix="hyperparameters") from None
        if getattr(hparams, "match_holdout", False) is None:
            # a method whose matching follows the target (RMU)
            hparams.match_holdout = self.target is not None
        if hparams.retain_loss != "none" and hparams.retain_coeff > 0 and not self.retain:
            raise InvalidRequest(
                f"method {self.method!r} with retain_loss={hparams.retain_loss!r} needs a retain "
                "set; give one, or set hyperparameters.retain_loss to 'none'",
                param="retain",
                code="missing_retain_set",
            )
        return hparams

    def _guard_hyperparameters(self) -> GuardHyperparameters:
        """A guard job (core.methods.guard) trains a prompt classifier, not the model:
        it needs the retain set (the prompts to tell apart) and takes no LoRA."""
        try:
            hparams = GuardHyperparameters.model_validate(self.hyperparameters)
        except ValidationError as exc:
            raise invalid_request_from(exc, prefix="hyperparameters") from None
        if not self.retain:
            raise InvalidRequest(
                "method 'guard' needs a retain set: its classifier learns to tell forget "
                "prompts from retain prompts",
                param="retain",
                code="missing_retain_set",
            )
        if self.lora is not None:
            raise InvalidRequest(
                "lora: a guard leaves the weights as they are", param="lora", code="invalid_value"
            )
        return hparams

    def validated(self) -> JobSpec:
        """Check everything that can be checked without loading data or models."""
        self._check_kind()
        self._check_resources()
        hparams = self.method_hyperparameters()
        strategy = self.resources.strategy
        if strategy in SHARDED_STRATEGIES and getattr(hparams, "precision", None) == "fp16":
            raise InvalidRequest(
                f"hyperparameters.precision: fp16 is not supported under {strategy} (its "
                "gradient scaler was not tried on sharded gradients); use bf16, bf16-pure "
                "or fp32",
                param="hyperparameters.precision",
                code="unsupported_strategy",
            )
        if (
            strategy == "deepspeed"
            and self.lora is None
            and getattr(hparams, "precision", None) == "bf16-pure"
        ):
            raise InvalidRequest(
                "hyperparameters.precision: bf16-pure full fine-tuning is not supported under "
                "deepspeed (ZeRO-3 keeps fp32 master copies of bf16 weights, so it would not "
                "train as under ddp or fsdp); use bf16 or fp32, or LoRA",
                param="hyperparameters.precision",
                code="unsupported_strategy",
            )
        if strategy in SHARDED_STRATEGIES and self._method_trains_part():
            raise InvalidRequest(
                f"resources.strategy: method {self.method!r} trains part of the model, "
                f"which {strategy} was not tried with; use ddp",
                param="resources.strategy",
                code="unsupported_strategy",
            )
        if strategy in SHARDED_STRATEGIES and getattr(hparams, "sam_rho", 0) > 0:
            raise InvalidRequest(
                f"hyperparameters.sam_rho: sharpness-aware steps (sam_rho, sam_steer) are not "
                f"supported under {strategy} (the move needs the whole gradient's norm); use "
                "ddp, or sam_rho 0 and sam_steer false",
                param="hyperparameters.sam_rho",
                code="unsupported_strategy",
            )
        if getattr(hparams, "match_holdout", False) and self.target is None:
            raise InvalidRequest(
                "hyperparameters.match_holdout: distribution-matched forgetting measures the "
                "holdout set at evaluation points, which only a job with a target has; add "
                "a target, or set match_holdout false",
                param="hyperparameters.match_holdout",
                code="invalid_value",
            )
        if getattr(hparams, "sam_steer", False) and self.target is None:
            raise InvalidRequest(
                "hyperparameters.sam_steer: steering the sharpness-aware radius needs the "
                "evaluation points of a target; add a target, or set sam_steer false",
                param="hyperparameters.sam_steer",
                code="invalid_value",
            )
        if self.evaluation.store_generations is None:
            # Data minimisation: a deletion request's report must not copy the very
            # text it was filed to remove.
            self.evaluation.store_generations = self.deletion_request is None
        return self

    def _check_resources(self) -> None:
        strategy = self.resources.strategy
        if strategy not in STRATEGIES:
            raise InvalidRequest(
                f"resources.strategy: {strategy!r} is not a strategy; use ddp, fsdp or deepspeed",
                param="resources.strategy",
                code="invalid_value",
            )
        if self.kind == "finetune" and self.resources.gpus > 1:
            raise InvalidRequest(
                "resources.gpus: a fine-tuning job runs in one process; ask for 1 GPU",
                param="resources.gpus",
                code="unsupported_strategy",
            )

    def _check_kind(self) -> None:
        def refuse(param: str, message: str) -> None:
            raise InvalidRequest(f"{param}: {message}", param=param, code="invalid_value")

        if self.kind == "unlearn":
            if self.forget is None:
                raise InvalidRequest(
                    "forget: an unlearning job needs a forget set",
                    param="forget",
                    code="missing_field",
                )
            if self.train is not None:
                refuse("train", "only a fine-tuning job (kind finetune) takes a training set")
            return
        if self.train is None:
            raise InvalidRequest(
                "train: a fine-tuning job needs a training set", param="train", code="missing_field"
            )
        if self.forget is not None:
            refuse("forget", "a fine-tuning job has no forget set; give its data as train")
        if self.deletion_request is not None:
            refuse("deletion_request", "a fine-tuning job cannot serve a deletion request")


def parse_job_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a raw mapping (API body, YAML file) into a JobSpec; raises InvalidRequest."""
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
    return spec.validated()


def invalid_request_from(exc: ValidationError, prefix: str | None = None) -> InvalidRequest:
    """The first pydantic error as an InvalidRequest naming its field (dotted path)."""
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    param = ".".join(([prefix] if prefix else []) + location) or prefix
    code = {
        "missing": "missing_field",
        "extra_forbidden": "unknown_field",
        "finite_number": "non_finite_value",
    }.get(first["type"], "invalid_value")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return InvalidRequest(f"{param}: {message}" if param else message, param=param, code=code)
