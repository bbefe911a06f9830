"""Build a GUARD artifact (``core.methods.guard``) from a model and its forget and
retain sets: ``obliviate guard``. The folder (``guard.json``, ``classifier.safetensors``
and a manifest of sha256 sums) is registered like a model (``POST /v1/models``) and
asked for as ``<base>+<guard>`` on the OpenAI-compatible endpoint (docs/inference.md).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from core.models.checkpoint import MANIFEST, MANIFEST_FORMAT, list_files
from core.settings import Settings
from core.spec import DEFAULT_PROMPT_TEMPLATE

#: retain questions the evaluation asks (generation is the slow part)
EVALUATED_RETAIN = 64


def build_guard_folder(
    model: str,
    forget: Path,
    retain: Path,
    out: Path,
    *,
    settings: Settings,
    lookup=None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    hyperparameters: dict | None = None,
    oracle: str | None = None,
    evaluate: bool = True,
    base_name: str | None = None,
) -> dict:
    """Build the guard of ``forget`` against ``retain`` on ``model`` (the reference the
    guard will be used with, e.g. ``demo-target``) into ``out``, evaluate it
    (``core.evaluation.guard``, against ``oracle`` when given) into
    ``evaluation.json``; the manifest. ``base_name``: the name the guard will be used
    with when ``model`` is a local copy of it (the worker's case)."""
    from core.data.encoding import encode_prompt
    from core.data.records import read_records
    from core.methods.guard import GuardHyperparameters, build_guard, save_guard
    from core.models.loading import fetch_model, load_model

    hp = GuardHyperparameters.model_validate(hyperparameters or {})
    forget_set, retain_set = read_records(forget), read_records(retain)
    base, tokenizer = load_model(
        fetch_model(model, settings, lookup=lookup), lookup=lookup, settings=settings
    )
    base.eval()

    def prompts(records) -> list[list[int]]:
        return [encode_prompt(tokenizer, r.prompt or "", prompt_template) for r in records]

    guard = build_guard(
        base,
        tokenizer,
        prompts(forget_set.records),
        prompts(retain_set.records),
        [r.answer for r in forget_set.records],
        [r.answer for r in retain_set.records],
        base_model=base_name or model,
        hp=hp,
        forget_questions=[r.prompt or "" for r in forget_set.records],
    )
    save_guard(guard, out)
    evaluation = None
    if evaluate:
        from core.evaluation.guard import evaluate_guard

        def encode(tokenizer_, question: str) -> list[int]:
            return encode_prompt(tokenizer_, question, prompt_template)

        oracle_pair = None
        if oracle is not None:
            oracle_pair = load_model(
                fetch_model(oracle, settings, lookup=lookup, param="oracle"),
                lookup=lookup,
                settings=settings,
            )
            oracle_pair[0].eval()
        evaluation = evaluate_guard(
            base,
            tokenizer,
            [guard],
            forget_set.records,
            retain_set.records[:EVALUATED_RETAIN],
            encode=encode,
            oracle=oracle_pair,
        )
        (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "guard",
        "created_at": datetime.now(timezone.utc).isoformat(),
        "base_model": base_name or model,
        "method": "guard",
        "hyperparameters": hp.model_dump(),
        "prompt_template": prompt_template,
        "data": {"forget": forget_set.provenance(), "retain": retain_set.provenance()},
        "classifier_holdout": guard.info["holdout"],
        "spans": len(guard.info["spans"]),
        "verdict": evaluation["verdict"] if evaluation else None,
        "seed": hp.seed,
        "files": list_files(out),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def run_guard_job(spec, inputs, workdir: Path, *, reporter, lookup, settings):
    """A job with ``method: guard``: the guard (and its evaluation) is the job's output,
    published like a checkpoint and asked for as ``<model>+<job id>``."""
    import time

    from core.pipeline import JobOutcome

    reporter.event("phase", "building the guard: classifier, spans, evaluation")
    started = time.monotonic()
    folder = workdir / "guard"
    manifest = build_guard_folder(
        inputs.model,
        inputs.forget,
        inputs.retain,
        folder,
        settings=settings,
        lookup=lookup,
        prompt_template=spec.prompt_template,
        hyperparameters=spec.hyperparameters,
        # the guard's evaluation compares generations with one oracle model: the first
        # given as a model (a stored job:<id> evaluation holds no generations to match)
        oracle=next((each.model for each in inputs.oracles if each.model), None),
        evaluate=spec.evaluation.enabled,
        base_name=spec.model,
    )
    manifest["metadata"] = spec.metadata
    verdict = manifest["verdict"]
    report = report_dir = None
    if verdict is not None:
        from core.evaluation.guard import write_guard_report

        report_dir = workdir / "report"
        report = write_guard_report(
            json.loads((folder / "evaluation.json").read_text()),
            json.loads((folder / "guard.json").read_text()),
            report_dir,
        )
    return JobOutcome(
        checkpoint_dir=folder,
        manifest=manifest,
        history=[],
        steps=0,
        trained_tokens=0,
        train_seconds=time.monotonic() - started,
        verdict={**verdict, "target_met": verdict["status"] == "forgotten"} if verdict else None,
        report_dir=report_dir,
        report=report,
    )
