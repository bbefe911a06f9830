"""One unlearning job from start to finish, on local inputs: the CLI and the worker
both call :func:`run_job`; they differ only in how references become local files and
where progress goes.

load data + model -> evaluate before -> train -> save checkpoint (manifest last)
-> evaluate after -> report
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from core.data.records import RecordSet, read_records
from core.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass
class JobInputs:
    """A job's references, resolved to local files (or a hub id for the model)."""

    model: str
    forget: Path
    retain: Path | None = None
    eval_forget: Path | None = None
    eval_retain: Path | None = None
    holdout: Path | None = None
    utility: dict[str, Path] = field(default_factory=dict)
    #: question/answer sets about a raw-text forget/retain corpus (MUSE KnowMem)
    knowmem_forget: Path | None = None
    knowmem_retain: Path | None = None
    #: a local model never trained on the forget set, evaluated here
    oracle_model: str | None = None
    #: or the stored statistics of an earlier evaluation of one
    oracle_result: dict | None = None
    #: human names for error messages and the manifest (e.g. the upload's file name)
    names: dict[str, str] = field(default_factory=dict)


class Reporter(Protocol):
    def event(self, kind: str, message: str, **data) -> None: ...
    def step(self, metrics) -> None: ...
    def should_cancel(self) -> bool: ...


class NullReporter:
    def event(self, kind: str, message: str, **data) -> None:
        log.info("%s: %s %s", kind, message, data or "")

    def step(self, metrics) -> None:
        pass

    def should_cancel(self) -> bool:
        return False


@dataclass
class JobOutcome:
    checkpoint_dir: Path
    manifest: dict
    history: list
    steps: int
    trained_tokens: int
    train_seconds: float
    report_dir: Path | None = None
    report: dict | None = None
    #: the after-model evaluation, reusable as an oracle's stored statistics
    evaluation: dict | None = None


def _read(path: Path | None, name: str | None) -> RecordSet | None:
    return read_records(path, name=name or path.name) if path else None


def run_job(
    spec: JobSpec,
    inputs: JobInputs,
    workdir: Path,
    *,
    reporter: Reporter | None = None,
    lookup=None,
    settings=None,
) -> JobOutcome:
    from core.data.encoding import encode_record_set
    from core.methods import get_method
    from core.models.checkpoint import save_checkpoint
    from core.models.loading import load_model
    from core.training.loop import Callbacks, run_training, weights_dtype

    reporter = reporter or NullReporter()
    method = get_method(spec.method)
    hparams = spec.method_hyperparameters()
    names = inputs.names

    reporter.event("phase", "reading data")
    forget_set = _read(inputs.forget, names.get("forget"))
    retain_set = _read(inputs.retain, names.get("retain"))

    reporter.event("phase", "loading model", model=spec.model)
    model, tokenizer = load_model(
        inputs.model,
        lookup=lookup,
        settings=settings,
        dtype=weights_dtype(hparams.precision, lora=spec.lora is not None),
    )
    from core.runtime import default_device

    model.to(default_device())  # evaluate before training where training will run
    template = spec.prompt_template
    forget_examples = encode_record_set(
        tokenizer, forget_set, max_length=hparams.max_length, template=template
    )
    retain_examples = (
        encode_record_set(tokenizer, retain_set, max_length=hparams.max_length, template=template)
        if retain_set
        else None
    )

    evaluator = None
    before = None
    if spec.evaluation.enabled:
        from core.pipeline_eval import JobEvaluator

        evaluator = JobEvaluator(
            spec, inputs, forget_set, retain_set, tokenizer, hparams.max_length, reporter
        )
        reporter.event("phase", "evaluating the model before unlearning")
        before = evaluator.evaluate(model, "before")

    reporter.event(
        "phase",
        "unlearning",
        method=method.name,
        forget_examples=len(forget_examples),
        retain_examples=len(retain_examples or []),
    )
    result = run_training(
        model,
        tokenizer,
        forget_examples,
        retain_examples,
        method,
        hparams,
        seed=spec.seed,
        lora=spec.lora,
        callbacks=Callbacks(
            on_step=reporter.step,
            on_event=lambda kind, message, data: reporter.event(kind, message, **data),
            should_cancel=reporter.should_cancel,
        ),
    )

    reporter.event("phase", "saving checkpoint")
    info = {
        "base_model": spec.model,
        "method": method.name,
        "hyperparameters": hparams.model_dump(),
        "lora": spec.lora.model_dump() if spec.lora else None,
        "seed": spec.seed,
        "prompt_template": template,
        "data": {
            role: records.provenance()
            for role, records in (("forget", forget_set), ("retain", retain_set))
            if records is not None
        },
        "training": {
            "steps": result.steps,
            "trained_tokens": result.trained_tokens,
            "seconds": round(result.elapsed_s, 2),
        },
        "metadata": spec.metadata,
    }
    checkpoint_dir = workdir / "checkpoint"
    manifest = save_checkpoint(
        result.model,
        tokenizer,
        checkpoint_dir,
        info=info,
        merge_lora=bool(spec.lora and spec.lora.merge),
    )
    outcome = JobOutcome(
        checkpoint_dir=checkpoint_dir,
        manifest=manifest,
        history=result.history,
        steps=result.steps,
        trained_tokens=result.trained_tokens,
        train_seconds=result.elapsed_s,
    )

    if evaluator is not None:
        reporter.event("phase", "evaluating the model after unlearning")
        model = result.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        after = evaluator.evaluate(model, "after")
        started = time.monotonic()
        outcome.report_dir, outcome.report = evaluator.write_report(
            workdir / "report",
            before,
            after,
            history=result.history,
            job_info={
                **info,
                "id": names.get("job"),
                **{
                    key: names[key]
                    for key in ("deletion_request", "deletion_request_ref", "submitted_by")
                    if key in names
                },
            },
            model=model,
            tokenizer=tokenizer,
            forget_examples=forget_examples,
        )
        outcome.evaluation = after.to_dict()
        log.info("report written in %.1fs", time.monotonic() - started)
    return outcome
