"""A fine-tuning job (``kind: finetune``) through the same pipeline as unlearning: train
on ``train`` (answer-token NLL), save a checkpoint with a manifest, and evaluate the
result on the job's evaluation sets.

Its main use is the retrain oracle: fine-tune the same base with the same recipe as the
target, on everything but the forget set, register it, and let unlearning jobs reuse its
evaluation as ``evaluation.oracle: "job:<id>"`` (the evaluation is stored as the oracle
statistics next to the report). Resumable like an unlearning run: the state is saved
at the end of every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.run_folder import RunFolder


def run_finetune_job(spec, inputs, workdir: Path, *, reporter, lookup, settings, resume: bool):
    from core.data.encoding import encode_record_set
    from core.data.records import read_records
    from core.errors import Paused
    from core.evaluation import EvaluationSets, evaluate_model
    from core.models.checkpoint import save_checkpoint
    from core.models.loading import load_model
    from core.pipeline import INFO_FILE, JobOutcome, _hook
    from core.pipeline_eval import ORACLE_STATS
    from core.runtime import default_device
    from core.training.auto import resolve_hyperparameters, restore_resolved
    from core.training.finetune import FINETUNE
    from core.training.loop import Callbacks, run_training, weights_dtype
    from core.training.state import TrainingState

    names = inputs.names
    hparams = spec.method_hyperparameters()
    run = RunFolder(workdir)
    resume = resume and run.has_state()
    reporter.event("phase", "reading data")
    train_set = read_records(inputs.forget, name=names.get("forget") or inputs.forget.name)
    reporter.event("phase", "loading model", model=spec.model)
    model, tokenizer = load_model(
        inputs.model,
        lookup=lookup,
        settings=settings,
        dtype=weights_dtype(hparams.precision, lora=spec.lora is not None),
    )
    model.to(default_device())
    saved = run.read_json(INFO_FILE) if resume else None
    if saved is not None:
        hparams, decided = restore_resolved(hparams, saved)
    else:
        hparams, decided = resolve_hyperparameters(
            hparams, model, n_examples=len(train_set), lora=spec.lora is not None
        )
    learning_rate = hparams.learning_rate
    run.write_json(
        INFO_FILE,
        {
            "resolved": {
                "learning_rate": learning_rate,
                "gradient_accumulation_steps": hparams.gradient_accumulation_steps,
            },
            "decided": decided,
        },
    )
    for name, how in decided.items():
        reporter.event("hyperparameter", f"{name} {getattr(hparams, name)} ({how})", name=name)
    examples = encode_record_set(
        tokenizer, train_set, max_length=hparams.max_length, template=spec.prompt_template
    )

    def save_state(point) -> bool:
        point.capture_state().save(run.state_dir)
        reporter.state_saved(run.root, point.step)
        return False

    reporter.event("phase", "fine-tuning", examples=len(examples), epochs=hparams.epochs)
    try:
        result = run_training(
            model,
            tokenizer,
            examples,
            None,
            FINETUNE,
            hparams,
            seed=spec.seed,
            lora=spec.lora,
            callbacks=Callbacks(
                on_step=reporter.step,
                on_event=lambda kind, message, data: reporter.event(kind, message, **data),
                should_cancel=reporter.should_cancel,
                should_pause=_hook(reporter, "should_pause", lambda: False),
                on_evaluation=save_state,
            ),
            resume=TrainingState.load(run.state_dir) if resume else None,
            new_schedule=bool(resume and spec.continue_from),
        )
    except Paused as paused:
        paused.state.save(run.state_dir)
        reporter.state_saved(run.root, paused.state.step)
        raise

    info = {
        "kind": "finetune",
        "base_model": spec.model,
        "method": "finetune",
        "hyperparameters": hparams.model_dump(),
        "hyperparameters_decided": decided,
        "lora": spec.lora.model_dump() if spec.lora else None,
        "seed": spec.seed,
        "prompt_template": spec.prompt_template,
        "data": {"train": train_set.provenance()},
        "training": {"steps": result.steps, "trained_tokens": result.trained_tokens},
        "metadata": spec.metadata,
    }
    reporter.event("phase", "saving checkpoint")
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
        selected_step=result.steps,
        learning_rate=learning_rate,
    )
    evaluation = spec.evaluation
    if evaluation.enabled and inputs.eval_forget is not None:
        reporter.event("phase", "evaluating the fine-tuned model")

        def read(path, role):
            return read_records(path, name=names.get(role) or path.name) if path else None

        sets = EvaluationSets(
            forget=read(inputs.eval_forget, "eval_forget"),
            retain=read(inputs.eval_retain, "eval_retain"),
            holdout=read(inputs.holdout, "holdout"),
            utility={name: read_records(path) for name, path in inputs.utility.items()},
        )
        net = result.model
        if hasattr(net, "merge_and_unload"):
            net = net.merge_and_unload()
        result_eval = evaluate_model(
            net,
            tokenizer,
            sets,
            evaluation,
            template=spec.prompt_template,
            max_length=hparams.max_length,
        )
        result_eval.label = "oracle"
        report_dir = workdir / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        stats = result_eval.to_dict()
        # Stored where job:<id> oracles are looked up (next to the report).
        (report_dir / ORACLE_STATS).write_text(json.dumps(stats))
        report = {
            "schema_version": "1.2",
            "kind": "finetune",
            "job": {**info, "id": names.get("job")},
            "summary": {
                "verdict": None,
                "target_met": False,
                **{
                    key: value
                    for key, value in result_eval.metrics.items()
                    if isinstance(value, (int, float)) or value is None
                },
            },
            "evaluations": {"after": stats},
            "training": {
                "metrics": [
                    {"step": m.step, "epoch": m.epoch, "values": m.values()} for m in result.history
                ]
            },
        }
        (report_dir / "report.json").write_text(json.dumps(report, default=str))
        outcome.report_dir, outcome.report, outcome.evaluation = report_dir, report, stats
    return outcome
