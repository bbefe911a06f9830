"""The evaluation half of a job: which sets, the oracle, the relearning attack, the
report. Kept apart from :mod:`core.pipeline` so a job without evaluation never imports
the evaluation stack."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.data.records import RecordSet, read_records
from core.evaluation import EvaluationResult, EvaluationSets, compare, evaluate_model, write_report

log = logging.getLogger(__name__)

ORACLE_STATS = "oracle_evaluation.json"


class JobEvaluator:
    def __init__(
        self,
        spec,
        inputs,
        forget_set: RecordSet,
        retain_set: RecordSet | None,
        tokenizer,
        max_length: int,
        reporter,
    ):
        self.spec, self.inputs, self.tokenizer = spec, inputs, tokenizer
        self.max_length, self.reporter = max_length, reporter
        names = inputs.names

        def read(path, role):
            return read_records(path, name=names.get(role) or path.name) if path else None

        self.sets = EvaluationSets(
            forget=read(inputs.eval_forget, "eval_forget") or forget_set,
            retain=read(inputs.eval_retain, "eval_retain") or retain_set,
            holdout=read(inputs.holdout, "holdout"),
            utility={name: read_records(path) for name, path in inputs.utility.items()},
            knowmem_forget=read(inputs.knowmem_forget, "knowmem_forget"),
            knowmem_retain=read(inputs.knowmem_retain, "knowmem_retain"),
        )

    def evaluate(self, model, label: str) -> EvaluationResult:
        result = evaluate_model(
            model,
            self.tokenizer,
            self.sets,
            self.spec.evaluation,
            template=self.spec.prompt_template,
            max_length=self.max_length,
        )
        result.label = label
        self.reporter.event(
            "evaluation",
            f"evaluated the {label} model in {result.seconds:.1f}s",
            **{k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        )
        return result

    def _oracle(self) -> EvaluationResult | None:
        if self.inputs.oracle_result is not None:
            oracle = EvaluationResult.from_dict(self.inputs.oracle_result)
            stored = oracle.sets["forget"].sha256
            if stored != self.sets.forget.sha256:
                self.reporter.event(
                    "warning",
                    "the stored oracle was evaluated on a different forget set; "
                    "forget quality compares unlike samples",
                    level="warning",
                )
            return oracle
        if self.inputs.oracle_model is None:
            return None
        from core.models.loading import load_model

        self.reporter.event(
            "phase", "evaluating the oracle model", oracle=self.spec.evaluation.oracle
        )
        from core.runtime import default_device

        oracle_model, _ = load_model(self.inputs.oracle_model, dtype="fp32")
        oracle_model.to(default_device())
        result = self.evaluate(oracle_model, "oracle")
        del oracle_model
        return result

    def write_report(
        self, out_dir: Path, before, after, *, history, job_info, model, tokenizer, forget_examples
    ) -> tuple[Path, dict]:
        oracle = self._oracle()
        out_dir.mkdir(parents=True, exist_ok=True)
        if oracle is not None:
            (out_dir / ORACLE_STATS).write_text(json.dumps(oracle.to_dict()))
        relearn = None
        if self.spec.evaluation.relearn is not None:
            from core.evaluation.relearn import relearn_attack

            self.reporter.event(
                "phase", "relearning attack", steps=self.spec.evaluation.relearn.steps
            )
            relearn = relearn_attack(
                model,
                tokenizer,
                self.sets.forget,
                self.spec.evaluation,
                template=self.spec.prompt_template,
                max_length=self.max_length,
                seed=self.spec.seed,
                before=after.metrics,
            )
        comparison = compare(before, after, oracle)
        training = [{"step": m.step, "epoch": m.epoch, "values": m.values()} for m in history]
        (out_dir / "evaluation.json").write_text(json.dumps(after.to_dict()))
        write_report(
            out_dir,
            job=job_info,
            before=before,
            after=after,
            oracle=oracle,
            comparison=comparison,
            training_metrics=training,
            relearn=relearn,
        )
        return out_dir, json.loads((out_dir / "report.json").read_text())
