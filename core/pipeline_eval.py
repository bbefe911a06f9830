"""The evaluation half of a job: which sets, the oracle, the relearning attack, the
report. Kept apart from :mod:`core.pipeline` so a job without evaluation never imports
the evaluation stack."""

from __future__ import annotations

import json
import logging
import time
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
        holdout_set: RecordSet | None,
        tokenizer,
        max_length: int,
        reporter,
        holdout_note: str | None = None,
    ):
        """``holdout_set``: the unseen part of the job's holdout set (``core.data.holdout``);
        ``holdout_note``: why records were left out of it, if any were."""
        self.spec, self.inputs, self.tokenizer = spec, inputs, tokenizer
        self.max_length, self.reporter = max_length, reporter
        names = inputs.names
        self.holdout_note = holdout_note

        def read(path, role):
            return read_records(path, name=names.get(role) or path.name) if path else None

        self.sets = EvaluationSets(
            forget=read(inputs.eval_forget, "eval_forget") or forget_set,
            retain=read(inputs.eval_retain, "eval_retain") or retain_set,
            holdout=holdout_set,
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

    def _oracles(self) -> tuple[list[EvaluationResult], object | None]:
        """Each oracle's evaluation (``evaluation.oracle``, in order), and the first one's
        model when this job loaded it (for the relearning attack); a stored evaluation
        comes without a model, and the models of later oracles are dropped once
        evaluated: only their truth ratios are pooled."""
        results, first_model = [], None
        for index, oracle in enumerate(self.inputs.oracles):
            label = "oracle" if index == 0 else f"oracle {index + 1}"
            if oracle.result is not None:
                result = EvaluationResult.from_dict(oracle.result)
                result.label = label
                if result.sets["forget"].sha256 != self.sets.forget.sha256:
                    self.reporter.event(
                        "warning",
                        f"the stored oracle {oracle.reference} was evaluated on a different "
                        "forget set: forget quality cannot compare against it",
                        level="warning",
                    )
                results.append(result)
                continue
            from core.models.loading import load_model
            from core.runtime import default_device

            self.reporter.event("phase", f"evaluating the {label} model", oracle=oracle.reference)
            model, _ = load_model(
                oracle.model, dtype="fp32", reference=oracle.reference, param=oracle.param
            )
            model.to(default_device())
            results.append(self.evaluate(model, label))
            if index == 0:
                first_model = model
            del model
        return results, first_model

    def _relearn(self, model, tokenizer, before: dict) -> dict:
        from core.evaluation.relearn import relearn_attack

        return relearn_attack(
            model,
            tokenizer,
            self.sets.forget,
            self.spec.evaluation,
            template=self.spec.prompt_template,
            max_length=self.max_length,
            seed=self.spec.seed,
            before=before,
        )

    def write_report(
        self,
        out_dir: Path,
        before,
        after,
        *,
        history,
        job_info,
        model,
        tokenizer,
        forget_examples,
        target=None,
        points=(),
        selected_step=None,
        stopped=None,
        eval_seconds=0.0,
        learning_rate=None,
    ) -> tuple[Path, dict]:
        from core.evaluation.verdict import final_verdict, oracle_checks
        from core.training.target import confirmation

        started = time.perf_counter()
        oracles, oracle_model = self._oracles()
        oracle = oracles[0] if oracles else None
        out_dir.mkdir(parents=True, exist_ok=True)
        relearn = None
        if self.spec.evaluation.relearn is not None:
            self.reporter.event(
                "phase", "relearning attack", steps=self.spec.evaluation.relearn.steps
            )
            relearn = self._relearn(model, tokenizer, after.metrics)
            oracle_relearn = None
            if oracle_model is not None:
                self.reporter.event("phase", "relearning attack on the oracle")
                oracle_relearn = self._relearn(oracle_model, tokenizer, oracle.metrics)
            elif oracle is not None:
                oracle_relearn = (oracle.model_info or {}).get("relearn")
            relearn = _with_oracle(relearn, oracle_relearn)
            if oracle is not None and oracle_model is not None and oracle_relearn is not None:
                oracle.model_info = {**oracle.model_info, "relearn": oracle_relearn}
        if oracle is not None:
            (out_dir / ORACLE_STATS).write_text(json.dumps(oracle.to_dict()))
        del oracle_model
        relearning = None
        if target is not None and target.relearning and self.sets.holdout is not None:
            relearning = self._relearning_check(model, tokenizer, forget_examples, learning_rate)
        verdict = final_verdict(
            before,
            after,
            target=target,
            relearning=relearning,
            confirmation=None
            if target is None
            else confirmation(points, selected_step, target.confirm_points),
            holdout_note=self.holdout_note,
        )
        comparison = compare(before, after, oracle, more_oracles=oracles[1:])
        training = [{"step": m.step, "epoch": m.epoch, "values": m.values()} for m in history]
        (out_dir / "evaluation.json").write_text(json.dumps(after.to_dict()))
        train_seconds = history[-1].elapsed_s if history else 0.0
        write_report(
            out_dir,
            job=job_info,
            before=before,
            after=after,
            oracle=oracle,
            more_oracles=oracles[1:],
            comparison=comparison,
            training_metrics=training,
            relearn=relearn,
            verdict=verdict,
            oracle_checks=oracle_checks(oracle, before=before, target=target),
            target=target.model_dump() if target is not None else None,
            evaluation_points=list(points),
            selected_step=selected_step,
            stopped=stopped,
            evaluation_cost={
                "seconds": round(eval_seconds, 2),
                "training_seconds": round(train_seconds, 2),
                "share_of_training": (eval_seconds / train_seconds) if train_seconds else None,
            },
        )
        report = json.loads((out_dir / "report.json").read_text())
        if self.inputs.regressions:
            report["regressions"] = self._regressions(model)
            (out_dir / "report.json").write_text(json.dumps(report))
        if self.inputs.batch_members:
            report_s = time.perf_counter() - started
            checks_started = time.perf_counter()
            report["requests"] = self._request_checks(model, after, target)
            report["batch_cost"] = _batch_cost(
                len(self.inputs.batch_members),
                history,
                points_s=eval_seconds,
                evaluations_s=before.seconds + after.seconds + report_s,
                request_checks_s=time.perf_counter() - checks_started,
            )
            (out_dir / "report.json").write_text(json.dumps(report))
        return out_dir, report

    def _request_checks(self, model, after, target) -> list[dict]:
        """A batch job's per-request evidence (``core.batch_evidence``): each request's
        own records scored by the published model, teacher-forced, against the holdout
        records the job's verdict used, with the job's threshold."""
        from core.batch_evidence import request_outcome
        from core.evaluation.verdict import membership_two_sided
        from core.spec import VERDICT_FORGET_THRESHOLD

        members = self.inputs.batch_members
        self.reporter.event(
            "phase", "checking each deletion request's records", requests=len(members)
        )
        spec = self.spec.evaluation.model_copy(update={"generate": False})
        holdout = after.sets["holdout"].samples if "holdout" in after.sets else None
        threshold = target.forget_threshold if target is not None else VERDICT_FORGET_THRESHOLD
        two_sided = membership_two_sided(target)
        outcomes = []
        for member in members:
            forget = None
            if member.path is not None:
                result = evaluate_model(
                    model,
                    self.tokenizer,
                    EvaluationSets(forget=read_records(member.path)),
                    spec,
                    template=self.spec.prompt_template,
                    max_length=self.max_length,
                )
                forget = result.sets["forget"].samples
            outcome = request_outcome(
                member.request_id,
                member.records,
                forget,
                holdout,
                threshold=threshold,
                two_sided=two_sided,
            )
            outcomes.append(outcome)
            self.reporter.event(
                "request_check",
                f"deletion request {member.request_id}: its {member.records.get('count')} "
                f"records are {outcome['status']}",
                level="info" if outcome["status"] == "forgotten" else "warning",
                request=member.request_id,
                status=outcome["status"],
            )
        return outcomes

    def _regressions(self, model) -> list[dict]:
        """Re-check the certified requests this job's base model was built on
        (``core.regressions``): the verdict's forgetting checks on each request's forget
        and holdout records with the new model, teacher-forced (no generation)."""
        from core.regressions import regression_outcome
        from core.spec import VERDICT_FORGET_THRESHOLD

        self.reporter.event(
            "phase",
            "re-checking earlier certified forgetting",
            requests=len(self.inputs.regressions),
        )
        spec = self.spec.evaluation.model_copy(update={"generate": False})
        outcomes = []
        for request in self.inputs.regressions:
            forget = holdout = None
            if request.not_checked is None:
                result = evaluate_model(
                    model,
                    self.tokenizer,
                    EvaluationSets(
                        forget=read_records(request.paths["forget"]),
                        holdout=read_records(request.paths["holdout"]),
                    ),
                    spec,
                    template=self.spec.prompt_template,
                    max_length=self.max_length,
                )
                forget = result.sets["forget"].samples
                holdout = result.sets["holdout"].samples if "holdout" in result.sets else None
            outcome = regression_outcome(
                request, forget, holdout, default_threshold=VERDICT_FORGET_THRESHOLD
            )
            outcomes.append(outcome)
            if outcome["regressed"]:
                self.reporter.event(
                    "regression",
                    f"deletion request {request.request_id} (certified on job "
                    f"{request.certified_job_id}) regressed: {outcome['reason']}",
                    level="warning",
                    request=request.request_id,
                    certified_job=request.certified_job_id,
                    status=outcome["status"],
                )
            else:
                self.reporter.event(
                    "regression",
                    f"deletion request {request.request_id}: {outcome['status']}"
                    + (f" ({outcome['reason']})" if outcome["status"] == "not_checked" else ""),
                    request=request.request_id,
                    certified_job=request.certified_job_id,
                    status=outcome["status"],
                )
        return outcomes

    def _relearning_check(self, model, tokenizer, forget_examples, learning_rate):
        from core.evaluation.relearn import relearn_probability, relearning_check_of

        attack = self.spec.evaluation.relearn
        self.reporter.event("phase", "relearning check of the verdict")
        measured = relearn_probability(
            model,
            tokenizer,
            forget_examples,
            self.sets.holdout,
            template=self.spec.prompt_template,
            max_length=self.max_length,
            steps=attack.steps if attack else 5,
            fraction=attack.fraction if attack else 0.5,
            batch_size=attack.batch_size if attack else 8,
            learning_rate=attack.learning_rate if attack else (learning_rate or 1e-5),
        )
        return relearning_check_of(measured)


def _batch_cost(requests, history, *, points_s, evaluations_s, request_checks_s) -> dict:
    """The batch's measured seconds (``core.batch_evidence.batch_cost``). The training
    loop's wall time includes its evaluation points, which count as evaluation."""
    from core.batch_evidence import batch_cost

    train_wall = history[-1].elapsed_s if history else 0.0
    return batch_cost(
        requests,
        training_s=max(train_wall - points_s, 0.0),
        evaluation_s=points_s + evaluations_s,
        request_checks_s=request_checks_s,
    )


def _with_oracle(relearn: dict, oracle_relearn: dict | None) -> dict:
    """The oracle under the same attack beside the unlearned model, and the ratio the
    verified-forgetting goal is stated in: the unlearned model's forget probability on
    the part the attack did not train on, over the oracle's."""
    relearn = {**relearn, "oracle": oracle_relearn}
    ours = (relearn.get("after_attack_unseen") or {}).get("forget_probability")
    theirs = ((oracle_relearn or {}).get("after_attack_unseen") or {}).get("forget_probability")
    relearn["unseen_probability_vs_oracle"] = ours / theirs if ours is not None and theirs else None
    return relearn
