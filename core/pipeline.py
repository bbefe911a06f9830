"""One job from start to finish, on local inputs: the CLI and the worker both call
:func:`run_job`; they differ only in how references become local files and where
progress goes.

unlearn: load data + model -> evaluate before -> train with evaluation points until the
target is met or the budget spent (``core.verification``) -> publish the chosen point
(manifest last) -> evaluate after -> final verdict and report.

finetune (``core.pipeline_finetune``): train on ``train`` -> checkpoint -> evaluate the
result (reusable as another job's oracle, ``job:<id>``).

In a job of several processes (``core.training.distributed``) every rank loads the data
and the model and trains its share; only rank 0 evaluates, probes, saves the run state,
the checkpoint and the report, and reports progress.

A run can stop and go on: at every evaluation point (and when paused) the full training
state is saved under ``<workdir>/run`` (``core.run_folder``); ``run_job(...,
resume=True)`` with that folder in place continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from core.data.holdout import unseen_holdout
from core.data.records import RecordSet, read_records
from core.run_folder import RunFolder
from core.spec import JobSpec

log = logging.getLogger(__name__)

#: the learning-rate rule of ``learning_rate: "auto"`` (core.training.auto)
BEFORE_FILE = "before.json"
INFO_FILE = "info.json"


@dataclass
class OracleInput:
    """One oracle: a local model evaluated in the job, or the stored statistics of an
    earlier evaluation of one (``job:<id>``)."""

    reference: str
    #: the spec field errors about it name (``evaluation.oracle`` or ``...oracle.<i>``)
    param: str = "evaluation.oracle"
    model: str | None = None
    result: dict | None = None


@dataclass
class JobInputs:
    """A job's references, resolved to local files (or a hub id for the model)."""

    model: str
    #: the set the job trains on: the forget set (unlearn) or the training set (finetune)
    forget: Path
    retain: Path | None = None
    eval_forget: Path | None = None
    eval_retain: Path | None = None
    holdout: Path | None = None
    utility: dict[str, Path] = field(default_factory=dict)
    #: question/answer sets about a raw-text forget/retain corpus (MUSE KnowMem)
    knowmem_forget: Path | None = None
    knowmem_retain: Path | None = None
    #: models never trained on the forget set (``evaluation.oracle``), in the spec's
    #: order: the first is the one PrivLeak, the relearning comparison and the oracle's
    #: checks use; forget quality pools them all
    oracles: list[OracleInput] = field(default_factory=list)
    #: human names for error messages and the manifest (e.g. the upload's file name)
    names: dict[str, str] = field(default_factory=dict)
    #: certified requests to re-check with the new model (``core.regressions``), their
    #: forget and holdout files in ``paths``
    regressions: list = field(default_factory=list)
    #: a batch job's deletion requests (``BatchMember``): each one's records are checked
    #: on their own with the published model (``core.batch_evidence``)
    batch_members: list = field(default_factory=list)


@dataclass
class BatchMember:
    """One request of a batch job: its records (dataset id, sha256, count, place in the
    union) and their local file (None when they could not be read)."""

    request_id: str
    records: dict
    path: Path | None = None


class Reporter(Protocol):
    def event(self, kind: str, message: str, **data) -> None: ...
    def step(self, metrics) -> None: ...
    def should_cancel(self) -> bool: ...
    def should_pause(self) -> bool: ...
    def evaluation(self, point: dict) -> None: ...
    def state_saved(self, folder: Path, step: int) -> None: ...


class NullReporter:
    def event(self, kind: str, message: str, **data) -> None:
        log.info("%s: %s %s", kind, message, data or "")

    def step(self, metrics) -> None:
        pass

    def should_cancel(self) -> bool:
        return False

    def should_pause(self) -> bool:
        return False

    def evaluation(self, point: dict) -> None:
        pass

    def state_saved(self, folder: Path, step: int) -> None:
        pass


def _hook(reporter, name: str, default):
    """A reporter method, or ``default`` for reporters written before it existed."""
    return getattr(reporter, name, None) or default


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
    #: the last evaluation point's model, when another point was published
    last_checkpoint_dir: Path | None = None
    last_step: int | None = None
    #: the step the published model comes from
    selected_step: int | None = None
    #: the final verdict with ``target_met`` (None without a verdict)
    verdict: dict | None = None
    learning_rate: float | None = None


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
    resume: bool = False,
) -> JobOutcome:
    """Run the job in ``workdir``; with ``resume`` continue from the state saved under
    ``workdir/run`` (by an earlier attempt, a pause, or the job ``continue_from``
    names)."""
    reporter = reporter or NullReporter()
    if spec.kind == "finetune":
        from core.errors import InvalidRequest
        from core.pipeline_finetune import run_finetune_job
        from core.training import distributed

        if distributed.world_size() > 1:
            raise InvalidRequest(
                "a fine-tuning job runs in one process; launch it without torchrun or "
                "--num-processes",
                param="resources.gpus",
                code="unsupported_strategy",
            )

        return run_finetune_job(
            spec,
            inputs,
            workdir,
            reporter=reporter,
            lookup=lookup,
            settings=settings,
            resume=resume,
        )
    if spec.method == "guard":  # its output is a guard, not weights (core.methods.guard)
        from core.pipeline_guard import run_guard_job

        return run_guard_job(
            spec, inputs, workdir, reporter=reporter, lookup=lookup, settings=settings
        )
    return _run_unlearning(spec, inputs, workdir, reporter, lookup, settings, resume)


def _run_unlearning(spec, inputs, workdir, reporter, lookup, settings, resume) -> JobOutcome:
    from core.data.encoding import encode_record_set
    from core.errors import Paused
    from core.methods import get_method
    from core.models.loading import load_model
    from core.runtime import default_device
    from core.training import distributed
    from core.training.auto import resolve_hyperparameters, restore_resolved
    from core.training.loop import Callbacks, run_training, weights_dtype
    from core.training.state import TrainingState, load_trainable_weights

    main = distributed.is_main()
    method = get_method(spec.method)
    hparams = spec.method_hyperparameters()
    names = inputs.names
    run = RunFolder(workdir)
    resume = resume and run.has_state()
    saved_info = run.read_json(INFO_FILE) if resume else None

    reporter.event("phase", "reading data")
    forget_set = _read(inputs.forget, names.get("forget"))
    retain_set = _read(inputs.retain, names.get("retain"))
    holdout_set, holdout_note = unseen_holdout(
        _read(inputs.holdout, names.get("holdout")), forget_set, retain_set
    )
    if holdout_note:
        reporter.event("warning", holdout_note, level="warning")

    reporter.event("phase", "loading model", model=spec.model)
    model, tokenizer = load_model(
        inputs.model,
        lookup=lookup,
        settings=settings,
        dtype=weights_dtype(hparams.precision, lora=spec.lora is not None),
        reference=spec.model,
    )
    model.to(default_device())  # evaluate before training where training will run
    template = spec.prompt_template

    if saved_info is not None:
        hparams, decided = restore_resolved(hparams, saved_info)
    else:
        hparams, decided = resolve_hyperparameters(
            hparams,
            model,
            n_examples=len(forget_set),
            lora=spec.lora is not None,
            processes=distributed.world_size(),
        )
    learning_rate = hparams.learning_rate
    for name, how in decided.items():
        reporter.event("hyperparameter", f"{name} {getattr(hparams, name)} ({how})", name=name)

    evaluator = None
    before = None
    if spec.evaluation.enabled and main:
        from core.evaluation import EvaluationResult
        from core.pipeline_eval import JobEvaluator

        evaluator = JobEvaluator(
            spec,
            inputs,
            forget_set,
            retain_set,
            holdout_set,
            tokenizer,
            hparams.max_length,
            reporter,
            holdout_note=holdout_note,
        )
        stored = run.read_json(BEFORE_FILE) if resume else None
        if stored is not None:
            before = EvaluationResult.from_dict(stored)
        else:
            reporter.event("phase", "evaluating the model before unlearning")
            before = evaluator.evaluate(model, "before")
            run.write_json(BEFORE_FILE, before.to_dict())

    target = spec.target
    if target is not None and holdout_set is None:
        reporter.event(
            "warning",
            ("no unseen holdout records" if holdout_note else "no holdout set")
            + ": forgetting cannot be verified, so the job runs the fixed recipe "
            f"({hparams.epochs} epochs) with the utility guard only",
            level="warning",
        )
    epochs = target.max_epochs if target is not None and holdout_set is not None else hparams.epochs
    hparams = hparams.model_copy(update={"epochs": epochs})
    if main:
        run.write_json(
            INFO_FILE,
            {
                "resolved": {
                    "learning_rate": hparams.learning_rate,
                    "gradient_accumulation_steps": hparams.gradient_accumulation_steps,
                },
                "decided": decided,
                "epochs": epochs,
                "method": method.name,
            },
        )

    forget_examples = encode_record_set(
        tokenizer, forget_set, max_length=hparams.max_length, template=template
    )
    retain_examples = (
        encode_record_set(tokenizer, retain_set, max_length=hparams.max_length, template=template)
        if retain_set
        else None
    )

    focus = None
    train_forget = forget_examples
    forget_tokens = getattr(hparams, "forget_tokens", "answer")
    if forget_tokens in ("facts", "both"):
        focus, train_forget = _fact_focus(
            tokenizer,
            forget_set,
            retain_set,
            holdout_set,
            forget_examples,
            reporter,
            both=forget_tokens == "both",
        )

    training_state = TrainingState.load(run.state_dir) if resume else None
    monitor = None
    if target is not None and main:
        monitor = _make_monitor(
            spec,
            target,
            inputs,
            evaluator,
            forget_set,
            retain_set,
            holdout_set,
            holdout_note,
            forget_examples,
            tokenizer,
            model,
            hparams,
            learning_rate,
            run,
            reporter,
            training_state,
            focus,
        )

    reporter.event(
        "phase",
        "unlearning",
        method=method.name,
        forget_examples=len(forget_examples),
        retain_examples=len(retain_examples or []),
        max_epochs=epochs,
    )
    try:
        result = run_training(
            model,
            tokenizer,
            train_forget,
            retain_examples,
            method,
            hparams,
            seed=spec.seed,
            lora=spec.lora,
            callbacks=Callbacks(
                on_step=reporter.step,
                on_event=lambda kind, message, data: reporter.event(kind, message, **data),
                should_cancel=reporter.should_cancel,
                should_pause=_hook(reporter, "should_pause", lambda: False),
                on_evaluation=monitor,
                forget_ceilings=monitor.forget_ceilings if monitor else None,
                sam_rho=monitor.sam_rho if monitor else None,
            ),
            evaluate_every_steps=target.eval_every_steps if target else None,
            resume=training_state,
            new_schedule=bool(resume and spec.continue_from),
            strategy=distributed.job_strategy(spec.resources.strategy),
        )
    except Paused as paused:
        if not main:
            raise
        paused.state.extra = {"monitor": _monitor_extra(monitor)}
        paused.state.save(run.state_dir)
        reporter.state_saved(run.root, paused.state.step)
        raise

    if not main:  # rank 0 publishes; the others only trained
        return JobOutcome(
            checkpoint_dir=workdir / "checkpoint",
            manifest={},
            history=result.history,
            steps=result.steps,
            trained_tokens=result.trained_tokens,
            train_seconds=result.elapsed_s,
        )
    model = result.model
    last_step = result.steps
    selected = None
    last_checkpoint_dir = None
    info = _manifest_info(spec, method, hparams, decided, forget_set, retain_set, result)
    info["base_model_sha256"] = _base_model_digest(inputs.model)
    if monitor is not None:
        from core.training.target import SELECTION_RULE, select_point

        selected = select_point(
            monitor.state.records(),
            utility_floor=target.utility_floor,
            confirm_points=target.confirm_points,
        )
        if selected is not None and selected.step != last_step:
            from core.models.checkpoint import save_checkpoint

            reporter.event(
                "phase",
                f"saving the last point (step {last_step}), then publishing step {selected.step}",
            )
            last_checkpoint_dir = workdir / "checkpoint-last"
            save_checkpoint(
                model,
                tokenizer,
                last_checkpoint_dir,
                info={**info, "evaluation_point": {"step": last_step, "role": "last"}},
                merge_lora=False,
            )
            load_trainable_weights(model, monitor.best_weights())
        if selected is not None:
            info["evaluation_point"] = {
                "step": selected.step,
                "epoch": selected.epoch,
                "role": "published",
                "selection_rule": SELECTION_RULE,
                "verdict": selected.verdict.get("status"),
            }

    reporter.event("phase", "saving checkpoint")
    from core.models.checkpoint import save_checkpoint

    checkpoint_dir = workdir / "checkpoint"
    manifest = save_checkpoint(
        model, tokenizer, checkpoint_dir, info=info, merge_lora=bool(spec.lora and spec.lora.merge)
    )
    outcome = JobOutcome(
        checkpoint_dir=checkpoint_dir,
        manifest=manifest,
        history=result.history,
        steps=result.steps,
        trained_tokens=result.trained_tokens,
        train_seconds=result.elapsed_s,
        last_checkpoint_dir=last_checkpoint_dir,
        last_step=last_step,
        selected_step=selected.step if selected else last_step,
        learning_rate=learning_rate,
    )

    if evaluator is not None:
        reporter.event("phase", "evaluating the model after unlearning")
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
            target=target,
            points=monitor.state.points if monitor else [],
            selected_step=outcome.selected_step,
            stopped=monitor.stop_reason if monitor else None,
            eval_seconds=monitor.state.eval_seconds if monitor else 0.0,
            learning_rate=learning_rate,
        )
        outcome.evaluation = after.to_dict()
        outcome.verdict = (outcome.report or {}).get("summary", {}).get("verdict")
        log.info("report written in %.1fs", time.monotonic() - started)
    elif selected is not None:
        # No final evaluation: the published point's own verdict is the job's, with the
        # confirmation check the final evaluation would add (a lone pass is not forgotten).
        from core.evaluation.verdict import Check, decide
        from core.training.target import confirmation

        verdict = selected.verdict
        check = confirmation(monitor.state.points, selected.step, target.confirm_points)
        if check is not None and verdict.get("status") == "forgotten":
            checks = [Check(**c) for c in verdict.get("checks", [])] + [check]
            verdict = decide(checks).to_dict()
        outcome.verdict = {**verdict, "target_met": verdict.get("status") == "forgotten"}
    return outcome


def _monitor_extra(monitor) -> dict:
    from dataclasses import asdict

    return asdict(monitor.state) if monitor is not None else {}


def _make_monitor(
    spec,
    target,
    inputs,
    evaluator,
    forget_set,
    retain_set,
    holdout_set,
    holdout_note,
    forget_examples,
    tokenizer,
    model,
    hparams,
    learning_rate,
    run,
    reporter,
    training_state,
    focus=None,
):
    from core.evaluation.probe import ProbeSets, probe_model, sample_sets, with_rouge
    from core.verification import MonitorState, RelearnSettings, TargetMonitor

    sets = evaluator.sets if evaluator else None
    probe_sets = sample_sets(
        ProbeSets(
            forget=sets.forget if sets else forget_set,
            holdout=holdout_set,
            retain=sets.retain if sets else retain_set,
            utility=dict(sets.utility) if sets else {},
        ),
        spec.evaluation.max_samples,
        spec.evaluation.sample_seed,
    )
    # The retain and utility records are the report's own sample (max_samples, the same
    # seed): a point's utility is estimated on the first few, confirmed near the floor on
    # more, and at the floor's edge on all of them (core.verification), so that the floor
    # judges what the report will measure. A smaller sample (128) read 0.945x where the
    # report's 400 records read 0.956x (the retain truth-ratio score: 0.953 vs 0.983), on
    # every seed of a benchmark recipe alike, since the same records are drawn every time
    # (docs/minitofu.md, stop 32).
    if getattr(hparams, "match_holdout", False) and holdout_set is None:
        reporter.event(
            "warning",
            "match_holdout needs a holdout set to measure the ceilings against; without "
            "one every forget answer is pushed, as without match_holdout",
            level="warning",
        )
    reporter.event("phase", "measuring the original model's probe")
    original = probe_model(
        model, tokenizer, probe_sets, template=spec.prompt_template, max_length=hparams.max_length
    )
    # The report's model utility has ROUGE-L where the evaluation generates; the probes
    # that confirm a utility estimate near the floor measure it too, against these.
    rouge_tokens = spec.evaluation.max_new_tokens if spec.evaluation.generate else 0
    if rouge_tokens and (probe_sets.retain is not None or probe_sets.utility):
        original = with_rouge(
            original,
            model,
            tokenizer,
            probe_sets,
            rouge_tokens,
            template=spec.prompt_template,
            max_length=hparams.max_length,
        )
    attack = spec.evaluation.relearn
    relearn = RelearnSettings(
        steps=attack.steps if attack else 5,
        fraction=attack.fraction if attack else 0.5,
        batch_size=attack.batch_size if attack else 8,
        learning_rate=attack.learning_rate if attack else learning_rate,
    )
    state = (
        MonitorState(**training_state.extra.get("monitor", {}))
        if training_state is not None
        else None
    )
    return TargetMonitor(
        target=target,
        tokenizer=tokenizer,
        sets=probe_sets,
        original=original,
        forget_examples=forget_examples,
        template=spec.prompt_template,
        max_length=hparams.max_length,
        run=run,
        reporter=reporter,
        relearn=relearn,
        state=state,
        holdout_note=holdout_note,
        match_holdout=bool(getattr(hparams, "match_holdout", False)),
        match_shift=float(getattr(hparams, "match_shift", 0.0)),
        sam_steer=bool(getattr(hparams, "sam_steer", False)),
        sam_rho=float(getattr(hparams, "sam_rho", 0.0)),
        focus=focus,
        forget_tokens=getattr(hparams, "forget_tokens", "answer"),
        rouge_tokens=rouge_tokens,
    )


def _fact_focus(
    tokenizer, forget_set, retain_set, holdout_set, forget_examples, reporter, *, both=False
):
    """``forget_tokens: facts``: which words are facts, and the forget examples with
    labels on those only (``core.data.facts``); ``both``: the examples with their whole
    answers' labels and the facts' as ``fact_labels`` (the training loop's two terms:
    the facts and the rest). The whole answers alone, with a
    warning, where that cannot be done."""
    from core.data.encoding import IGNORE_INDEX
    from core.data.facts import FACT_WORD_SHARE, FactFocus

    why = None
    if not getattr(tokenizer, "is_fast", False):
        why = "the tokenizer is not a fast one (no character offsets for its tokens)"
    elif forget_set.kind == "text":
        why = "raw-text records have no question and answer"
    if why:
        reporter.event(
            "warning",
            f"forget_tokens {'both' if both else 'facts'}: {why}; the forget loss sees "
            "every answer token",
            level="warning",
        )
        return None, forget_examples
    focus = FactFocus.of(
        record.answer
        for records in (forget_set, retain_set, holdout_set)
        if records is not None
        for record in records.records
    )
    focused = focus.examples(tokenizer, forget_set.records, forget_examples)
    kept = sum(sum(label != IGNORE_INDEX for label in e.labels) for e in focused)
    total = sum(e.n_answer_tokens for e in forget_examples)
    whole = sum(a is b for a, b in zip(focused, forget_examples))
    reporter.event(
        "phase",
        ("two forget terms, the answers' phrasing and " if both else "forget loss on ")
        + f"the answers' facts (words in under {FACT_WORD_SHARE:.0%} of the "
        f"answers, not in the question): {kept} of {total} answer tokens"
        + (f"; {whole} answers without one keep every token" if whole else ""),
        fact_tokens=kept,
        answer_tokens=total,
        whole_answers=whole,
    )
    if both:
        return focus, [
            replace(e, fact_labels=list(f.labels)) for e, f in zip(forget_examples, focused)
        ]
    return focus, focused


def _base_model_digest(path_or_id: str) -> str | None:
    """The base model's ``folder_digest`` (for certificates: the model before), when it
    is a local folder; None for a hub id, whose files the hub cache holds."""
    from core.models.checkpoint import folder_digest, list_files

    folder = Path(path_or_id)
    return folder_digest(list_files(folder)) if folder.is_dir() else None


def _manifest_info(spec, method, hparams, decided, forget_set, retain_set, result) -> dict:
    return {
        "base_model": spec.model,
        "method": method.name,
        "hyperparameters": hparams.model_dump(),
        "hyperparameters_decided": decided,
        "lora": spec.lora.model_dump() if spec.lora else None,
        "seed": spec.seed,
        "prompt_template": spec.prompt_template,
        "target": spec.target.model_dump() if spec.target else None,
        "data": {
            role: records.provenance()
            for role, records in (("forget", forget_set), ("retain", retain_set))
            if records is not None
        },
        "training": {
            "steps": result.steps,
            "trained_tokens": result.trained_tokens,
            "seconds": round(result.elapsed_s, 2),
            "stopped_early": result.stopped_early,
        },
        "metadata": spec.metadata,
    }
