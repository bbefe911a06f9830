"""Evaluation points of a training run with a target: measure, judge, keep, stop.

At every point (``run_training``'s ``on_evaluation``) the :class:`TargetMonitor`

1. takes the **light** measurement: the holdout answers' likelihood under the current
   weights (a capped sample), set against the forget and retain answers' likelihoods
   that the training pass itself computed this epoch (free). That gives the membership
   AUC (forget vs holdout) and a retain-likelihood ratio, at a small share of the
   epoch's cost;
2. when the light figures allow a verdict (the forget answers are no longer clearly
   likelier than unseen ones, retain likelihood is near the floor), takes the
   **verdict probe**: truth ratios of the forget and holdout sets, retain and utility
   samples (teacher-forced, no generation; ``core.evaluation.probe``), and asks the
   verdict (``core.evaluation.verdict``). Utility comes first, on 32 records per set;
   an estimate within ``UTILITY_CONFIRM_BAND`` of the floor is re-measured on every
   probed record before it turns the point down, lets it meet the target, or records it
   as a candidate to publish at the floor. When everything else passes, it also runs
   the relearning check. A verdict probe costs about an epoch of training (six scored
   answers per record, forget and holdout), so after one that did not meet the target
   the next waits 1, 2, 4 ... points (at most ``MAX_BACKOFF``), and the last point
   always gets one;
3. keeps what the run may publish: the weights of the best point so far
   (``core.training.target.select_point``) and the full resumable training state;
4. reports the point (``reporter.evaluation``) and says whether to stop
   (``core.training.target.should_stop``).

It may also steer the training it watches: under ``match_holdout`` the forget answers'
ceilings (:func:`matched_ceilings`), under ``sam_steer`` the sharpness-aware radius
(:func:`steer_sam_rho`). Both are part of the saved state, and the training loop asks
for them on rank 0 after every point (``core.training.loop.Callbacks``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.evaluation import metrics
from core.evaluation.probe import Probe, ProbeSets, probe_model, utility_stages, with_rouge
from core.evaluation.verdict import (
    MEMBERSHIP_MARGIN,
    Verdict,
    decide,
    forgetting_checks,
    utility_check,
)
from core.run_folder import RunFolder
from core.training.target import PointRecord, forgets, select_point, should_stop

log = logging.getLogger(__name__)

#: the light measurement's limit for the membership AUC: looser than the verdict's,
#: since the forget likelihoods it uses are up to an epoch old
GATE_AUC = 0.5 + MEMBERSHIP_MARGIN + 0.15
#: points to wait after a verdict probe that did not meet the target, doubling
MAX_BACKOFF = 4
#: holdout answers scored at a light point (the verdict probe scores them all); the
#: measurement is reused for one more point, since unseen data's likelihood drifts slowly
LIGHT_HOLDOUT_SAMPLES = 32
BEST_WEIGHTS = "best.pt"
#: retain and utility records per set that estimate utility at a verdict probe
UTILITY_QUICK_SAMPLES = 32
#: an estimate this close to the floor (either side) is confirmed on
#: ``UTILITY_CONFIRM_SAMPLES`` records per set before it turns a point down or lets it
#: meet the target: on the mini-TOFU benchmark the 32-record estimate read 0.93x at
#: points that 128 records (and the full sets) put at 1.01-1.06x, and the 0.95x floor
#: turned every one of them down
UTILITY_CONFIRM_BAND = 0.1
UTILITY_CONFIRM_SAMPLES = 128
#: a confirmed estimate this close to the floor is measured as the report will measure
#: it: on the report's whole sample (``evaluation.max_samples`` per set) with ROUGE-L.
#: On the 30-author GPT-2 benchmark 128 records without ROUGE read 0.939x where the
#: report read 0.956x (stop 32); the edge band keeps the cost to such points (the demo
#: job's estimates, at 0.97-0.98x, do not pay it: its evaluation time would double)
UTILITY_EDGE_BAND = 0.03
#: ``sam_steer``: a verdict probe whose utility check fails lowers the radius, one whose
#: relearning check fails raises it, by this factor each time, within
#: ``SAM_STEER_RANGE`` times the job's ``sam_rho``; a move brings the next verdict probe
#: to the next point. Measured on the 30-author benchmark: 0.3 left one seed's
#: relearning check at 1.6x, 0.4-0.5 another's utility at 0.946-0.948x; steps of 4/3 at
#: backed-off probes reached 0.53 too late for the first (1.62x -> 1.52x). The cap was 2x
#: until the phrasing+facts recipe (stop 32) sat at it (0.6) with relearning at 1.54-1.68x
#: the holdout's on three seeds; at 3x one seed passed at 0.9 (1.45x, then 1.36x), with
#: utility 0.956-0.961x (docs/minitofu.md)
SAM_STEER_FACTOR = 1.5
SAM_STEER_RANGE = (0.5, 3.0)


@dataclass
class RelearnSettings:
    """The attacks of the relearning check: a few fine-tuning steps on part of the forget
    set, and on part of the holdout set, then each rest's likelihood."""

    steps: int = 5
    fraction: float = 0.5
    batch_size: int = 8
    learning_rate: float = 1e-3


@dataclass
class MonitorState:
    """What a resumed run needs to go on judging as if it never stopped."""

    points: list[dict] = field(default_factory=list)
    best_step: int | None = None
    eval_seconds: float = 0.0
    #: the point index at which the next verdict probe may run, and the current wait
    next_verdict: int = 0
    backoff: int = 1
    verdict_probes: int = 0
    #: under ``match_holdout``, per forget example, the per-token NLL from which the
    #: training loop stops pushing its answer (``TargetMonitor.forget_ceilings``)
    ceilings: list | None = None
    #: under ``sam_steer``: the radius the training loop uses now, and the job's
    #: ``sam_rho`` it was steered from (a continuation that sets another starts afresh)
    sam_rho: float | None = None
    sam_rho_base: float | None = None

    def records(self) -> list[PointRecord]:
        return [PointRecord(**p) for p in self.points]


class TargetMonitor:
    def __init__(
        self,
        *,
        target,
        tokenizer,
        sets: ProbeSets,
        original: Probe,
        forget_examples,
        template: str,
        max_length: int,
        run: RunFolder,
        reporter,
        batch_size: int = 64,
        relearn: RelearnSettings | None = None,
        state: MonitorState | None = None,
        holdout_note: str | None = None,
        match_holdout: bool = False,
        match_shift: float = 0.0,
        sam_steer: bool = False,
        sam_rho: float = 0.0,
        focus=None,
        forget_tokens: str = "answer",
        rouge_tokens: int = 0,
    ):
        self.target, self.tokenizer, self.sets = target, tokenizer, sets
        #: ROUGE-L's generation length where the report's model utility includes it (0:
        #: not generated); the confirming utility estimate then includes it too, and
        #: ``original`` must hold the original's ``rouge_recall`` on the same records
        self.rouge_tokens = rouge_tokens
        self.original, self.template, self.max_length = original, template, max_length
        self.forget_examples = forget_examples
        self.run, self.reporter, self.batch_size = run, reporter, batch_size
        self.relearn = relearn or RelearnSettings()
        self.state = state or MonitorState()
        #: why the job's holdout set is missing, when one was given (``core.data.holdout``)
        self.holdout_note = holdout_note
        self.match_holdout, self.match_shift = match_holdout, match_shift
        self.sam_steer = sam_steer and sam_rho > 0
        if self.sam_steer and self.state.sam_rho_base != sam_rho:
            self.state.sam_rho, self.state.sam_rho_base = sam_rho, sam_rho
        #: why the run stopped at a point, once it did
        self.stop_reason: str | None = None
        #: the last light holdout measurement: (point index, its answers' per-token NLL
        #: by part: ``_light_holdout_nll``)
        self._holdout: tuple[int, dict[str, np.ndarray]] | None = None
        #: utility is estimated on the first UTILITY_QUICK_SAMPLES records of each retain
        #: and utility set; an estimate near the floor is confirmed on the rest
        self.quick_utility_sets, self.confirm_utility_sets, self.edge_utility_sets = utility_stages(
            sets, UTILITY_QUICK_SAMPLES, UTILITY_CONFIRM_SAMPLES
        )
        self.original_retain_probability = original.mean("retain", "probability")
        holdout = sets.holdout
        self.light_holdout = (
            None if holdout is None else ProbeSets(forget=_head(holdout, LIGHT_HOLDOUT_SAMPLES))
        )
        #: ``forget_tokens`` facts: the training pass measures the forget answers' fact
        #: tokens only, so the light holdout answers are scored on theirs; both: it
        #: measures whole answers, facts and the rest (``point.fact_nll``,
        #: ``point.rest_nll``), so they are scored all three ways
        self.forget_tokens = forget_tokens if focus is not None else "answer"
        self.light_holdout_parts: dict[str, list] = {}
        if focus is not None and self.light_holdout is not None:
            from core.data.encoding import encode_record_set
            from core.data.facts import phrasing_examples

            records = self.light_holdout.forget
            encoded = encode_record_set(
                tokenizer, records, max_length=max_length, template=template
            )
            facts = focus.examples(tokenizer, records.records, encoded)
            self.light_holdout_parts["facts"] = facts
            if self.forget_tokens == "both":
                rest = phrasing_examples(encoded, facts)
                self.light_holdout_parts["rest"] = [e for e in rest if e is not None]
        run.points_dir.mkdir(parents=True, exist_ok=True)

    # -- the callback --------------------------------------------------------------------
    def __call__(self, point) -> bool:
        started = time.perf_counter()
        rho = self.state.sam_rho  # the radius of the steps up to this point
        light = self._light(point)
        index = len(self.state.points)
        wait = self._wait_reason(light, index)
        # The end of the plain phase (sam_from) is judged as a first job's last point
        # would be: always probed, and the holdout measured afresh after it, as a
        # continuation does, so that one job runs as the two-job recipe.
        phase_end = point.phase_end
        if phase_end:
            self._holdout = None
        if wait is None or point.final or phase_end:
            verdict, figures = self._verdict_probe(point.model)
            if verdict.status == "forgotten" and self.target.relearning:
                check = self._relearning(point.model, figures)
                verdict = decide(verdict.checks + [check])
                figures["relearn_ratio"] = check.value
            # The probe's fresh figures win over the light ones of the same name.
            figures = {**light, **{k: v for k, v in figures.items() if v is not None}}
            figures["measured_by"] = "verdict probe"
            # before sam_from's step the radius is not in use: nothing to steer
            steered = point.sharpness_aware and self._steer(verdict, figures, point.step)
            self.state.verdict_probes += 1
            if verdict.status == "forgotten":
                self.state.backoff = 1
            else:
                if steered:  # the training changes: see what it does from the next point
                    self.state.backoff = 1
                self.state.next_verdict = index + self.state.backoff
                self.state.backoff = min(self.state.backoff * 2, MAX_BACKOFF)
        else:
            verdict = Verdict("not_forgotten", wait, [])
            figures = {**light, "measured_by": "light"}
        if self.sam_steer:
            figures["sam_rho"] = rho if point.sharpness_aware else 0.0
        record = PointRecord(
            step=point.step, epoch=point.epoch, verdict=verdict.to_dict(), metrics=figures
        )
        points = self.state.records() + [record]
        self.state.points.append(asdict(record))
        best = select_point(
            points,
            utility_floor=self.target.utility_floor,
            confirm_points=self.target.confirm_points,
        )
        if best is record:
            self._keep_best(point.model, record.step)
        self.state.eval_seconds += time.perf_counter() - started
        self._save_state(point)
        seconds = time.perf_counter() - started
        stop = should_stop(
            points,
            utility_floor=self.target.utility_floor,
            stop_when_met=self.target.stop_when_met,
            confirm_points=self.target.confirm_points,
        )
        self.reporter.evaluation(
            {
                "step": point.step,
                "epoch": point.epoch,
                "seconds": seconds,
                "metrics": figures,
                "verdict": verdict.to_dict(),
            }
        )
        if stop:
            self.stop_reason = stop
            self.reporter.event("target", f"stopping at step {point.step}: {stop}", step=point.step)
        return stop is not None

    # -- measurements --------------------------------------------------------------------
    def _light(self, point) -> dict[str, Any]:
        """Membership AUC from the training pass's forget likelihoods against a fresh
        sample of holdout likelihoods; retain likelihood against the original's."""
        figures: dict[str, Any] = {}
        forget_nll = np.asarray(list(point.forget_nll.values()), dtype=np.float64)
        if forget_nll.size:
            figures["forget_probability"] = float(np.exp(-forget_nll).mean())
        retain_nll = np.asarray(list(point.retain_nll.values()), dtype=np.float64)
        if retain_nll.size:
            figures["retain_probability"] = float(np.exp(-retain_nll).mean())
            if self.original_retain_probability:
                figures["retain_ratio"] = (
                    figures["retain_probability"] / self.original_retain_probability
                )
        if self.light_holdout is not None and forget_nll.size:
            index = len(self.state.points)
            if self._holdout is None or index - self._holdout[0] > 1:
                self._holdout = (index, self._light_holdout_nll(point.model))
            holdout = self._holdout[1]
            # what the training pass measured of the forget answers: their facts under
            # facts, else the whole answers
            holdout_nll = holdout["facts" if self.forget_tokens == "facts" else "answer"]
            figures["membership_auc"] = metrics.roc_auc(-forget_nll, -holdout_nll)
            figures["holdout_probability"] = float(np.exp(-holdout_nll).mean())
            if self.forget_tokens == "both":
                figures.update(self._parts(point, holdout))
            elif self.match_holdout:
                self.state.ceilings = matched_ceilings(
                    point.forget_nll, holdout_nll, len(self.forget_examples), self.match_shift
                )
                figures["forget_matched"] = _share_at(point.forget_nll, self.state.ceilings)
        return figures

    def _parts(self, point, holdout: dict[str, np.ndarray]) -> dict[str, Any]:
        """``forget_tokens: both``: membership AUC of the answers' phrasing and of their
        facts, each against the holdout answers' same part, and under ``match_holdout``
        the two columns of ceilings (phrasing, facts), each matched to its own part."""
        figures: dict[str, Any] = {}
        measured = {"rest": point.rest_nll, "facts": point.fact_nll}
        columns = {}
        for part, nll in measured.items():
            if not nll or not len(holdout[part]):
                continue
            values = np.asarray(list(nll.values()), dtype=np.float64)
            figures[f"{part}_membership_auc"] = metrics.roc_auc(-values, -holdout[part])
            if self.match_holdout:
                columns[part] = matched_ceilings(
                    nll, holdout[part], len(self.forget_examples), self.match_shift
                )
                figures[f"{part}_matched"] = _share_at(nll, columns[part])
        if self.match_holdout and columns:
            n = len(self.forget_examples)
            rest = columns.get("rest", [None] * n)
            facts = columns.get("facts", [None] * n)
            self.state.ceilings = [[r, f] for r, f in zip(rest, facts)]
            # an answer is matched once each of its parts is at its ceiling
            figures["forget_matched"] = float(
                np.mean(
                    [
                        _at(point.rest_nll, rest, i) and _at(point.fact_nll, facts, i)
                        for i in point.fact_nll
                    ]
                )
            )
        return figures

    def _light_holdout_nll(self, model) -> dict[str, np.ndarray]:
        """Per-token NLL of the light holdout sample's answers (``answer``; not under
        ``forget_tokens: facts``, which needs only theirs), of their fact tokens
        (``facts``, under facts and both) and of the rest (``rest``, under both: the
        answers that have tokens besides their facts)."""
        from core.evaluation.probe import scoring_mode
        from core.evaluation.scoring import pad_token_id, score_sequences

        measured = {}
        with scoring_mode(model):
            for part, examples in self.light_holdout_parts.items():
                scores = (  # none: e.g. no holdout answer has phrasing besides its facts
                    score_sequences(
                        model,
                        examples,
                        pad_token_id=pad_token_id(self.tokenizer),
                        batch_size=self.batch_size,
                    )
                    if examples
                    else []
                )
                measured[part] = np.array([s.nll / s.n_tokens for s in scores], dtype=np.float64)
        if self.forget_tokens != "facts":
            probe = probe_model(
                model,
                self.tokenizer,
                self.light_holdout,
                template=self.template,
                max_length=self.max_length,
                batch_size=self.batch_size,
                truth_ratio=False,
            )
            measured["answer"] = -np.asarray(probe.column("forget", "mia_loss"), dtype=np.float64)
        return measured

    def forget_ceilings(self) -> list[float | None] | None:
        """For the training loop (``Callbacks.forget_ceilings``): the ceilings of the
        last evaluation point, restored with the state on resume."""
        return self.state.ceilings

    def sam_rho(self) -> float | None:
        """For the training loop (``Callbacks.sam_rho``): the steered radius, or None to
        keep the job's."""
        return self.state.sam_rho if self.sam_steer else None

    def _steer(self, verdict: Verdict, figures: dict[str, Any], step: int) -> bool:
        """Whether the radius moved."""
        if not self.sam_steer:
            return False
        before = self.state.sam_rho
        after, why = steer_sam_rho(
            before,
            self.state.sam_rho_base,
            utility_ratio=figures.get("utility_ratio"),
            utility_floor=self.target.utility_floor,
            relearning=verdict.check("relearning"),
        )
        if why is None:
            return False
        self.state.sam_rho = after
        self.reporter.event(
            "steer",
            f"sam_rho {before:.3g} -> {after:.3g} from step {step}: {why}",
            step=step,
            sam_rho=after,
        )
        return True

    def _wait_reason(self, light: dict[str, Any], index: int) -> str | None:
        """Why this point gets no verdict probe, or None to take one."""
        auc = light.get("membership_auc")
        if auc is not None and auc > GATE_AUC:
            return (
                f"the forget answers are still likelier than unseen ones (membership AUC "
                f"{auc:.3g} from this epoch's training pass); no verdict probe yet"
            )
        ratio = light.get("retain_ratio")
        if ratio is not None and ratio < self.target.utility_floor:
            return (
                f"retain likelihood is at {ratio:.3g}x the original's, below the utility "
                "floor; no verdict probe yet"
            )
        if index < self.state.next_verdict:
            return (
                f"the last verdict probe did not meet the target; the next one runs at "
                f"evaluation point {self.state.next_verdict + 1}"
            )
        return None

    def _probe(self, model, sets: ProbeSets) -> Probe:
        return probe_model(
            model,
            self.tokenizer,
            sets,
            template=self.template,
            max_length=self.max_length,
            batch_size=self.batch_size,
        )

    def _verdict_probe(self, model) -> tuple[Verdict, dict[str, Any]]:
        """Utility first, on the quick sample: below the floor, the point is judged
        without scoring the forget and holdout sets, the probe's larger part. Then forget
        and holdout truth ratios. The quick estimate is confirmed on every probed record
        only where it decides something: before turning a point down for utility, and
        before recording a utility at the floor for a point the published-point rule
        ranks first (``forgets``: the knowledge check passed, the membership check does
        not say remembered), met or not. The quick sample is 32 records a set: on the
        Llama benchmark it read 0.98x at such a point whose utility on the report's
        sample was 0.89x, and that point was published as "at the floor" (docs/minitofu.md,
        stop 35)."""
        utility = self._probe(model, self.quick_utility_sets)
        ratio = self._utility_ratio(utility)
        confirm = (
            self.confirm_utility_sets is not None
            and ratio is not None
            and abs(ratio - self.target.utility_floor) < UTILITY_CONFIRM_BAND
        )
        if confirm and ratio < self.target.utility_floor:
            utility, ratio = self._confirm(model, utility)
            confirm = False
        if ratio is not None and ratio < self.target.utility_floor:
            check = utility_check(ratio, self.target.utility_floor)
            figures = {
                "retain_probability": utility.mean("retain", "probability"),
                "utility_ratio": ratio,
                "utility_parts": utility.utility_parts(self.original),
                "probe_seconds": utility.seconds,
            }
            return decide([check]), figures
        forgetting = self._probe(
            model, ProbeSets(forget=self.sets.forget, holdout=self.sets.holdout)
        )
        verdict, figures = self.judge(utility.with_sets(forgetting))
        if confirm and forgets(verdict.to_dict()):
            utility, _ = self._confirm(model, utility)
            verdict, figures = self.judge(utility.with_sets(forgetting))
        return verdict, figures

    def _confirm(self, model, quick: Probe) -> tuple[Probe, float | None]:
        """The utility probe and ratio on ``UTILITY_CONFIRM_SAMPLES`` records (the quick
        ones are not scored again); within ``UTILITY_EDGE_BAND`` of the floor, on every
        probed record (the report's sample) and with ROUGE-L of greedy answers where the
        report's model utility has it (one of three components per set, it hardly moves
        on retained data: without it the estimate reads low)."""
        utility = quick.extended(self._probe(model, self.confirm_utility_sets))
        ratio = self._utility_ratio(utility)
        if ratio is None or abs(ratio - self.target.utility_floor) >= UTILITY_EDGE_BAND:
            return utility, ratio
        if self.edge_utility_sets is not None:
            utility = utility.extended(self._probe(model, self.edge_utility_sets))
        if self.rouge_tokens:
            utility = with_rouge(
                utility,
                model,
                self.tokenizer,
                self.sets,
                self.rouge_tokens,
                template=self.template,
                max_length=self.max_length,
                batch_size=self.batch_size,
            )
        return utility, self._utility_ratio(utility)

    def _utility_ratio(self, probe: Probe) -> float | None:
        """Against the original's utility on the same records (``probe`` scored a
        prefix of the sets the original was probed on)."""
        utility = probe.utility()
        original = self.original.prefix_like(probe).utility()
        if utility is None or not original:
            return None
        return utility / original

    def judge(self, probe: Probe) -> tuple[Verdict, dict[str, Any]]:
        """The verdict and the figures of one probe (no relearning check)."""
        ratio = self._utility_ratio(probe)
        checks, missing = forgetting_checks(
            probe.columns.get("forget"),
            probe.columns.get("holdout"),
            threshold=self.target.forget_threshold,
            two_sided=self.target.membership == "two_sided",
            holdout_note=self.holdout_note,
        )
        checks.append(utility_check(ratio, self.target.utility_floor))
        verdict = decide(checks, missing=missing)
        figures = {
            "forget_probability": probe.mean("forget", "probability"),
            "holdout_probability": probe.mean("holdout", "probability"),
            "retain_probability": probe.mean("retain", "probability"),
            "forget_truth_ratio": _median(probe.column("forget", "truth_ratio")),
            "holdout_truth_ratio": _median(probe.column("holdout", "truth_ratio")),
            "utility_ratio": ratio,
            "utility_parts": probe.utility_parts(self.original),
            "knowledge_p": _value(verdict, "knowledge"),
            "membership_auc": _value(verdict, "membership"),
            "probe_seconds": probe.seconds,
        }
        return verdict, figures

    def _relearning(self, model, figures) -> Any:
        from core.evaluation.relearn import relearn_probability, relearning_check_of

        measured = relearn_probability(
            model,
            self.tokenizer,
            self.forget_examples,
            self.sets.holdout,
            template=self.template,
            max_length=self.max_length,
            steps=self.relearn.steps,
            fraction=self.relearn.fraction,
            batch_size=self.relearn.batch_size,
            learning_rate=self.relearn.learning_rate,
        )
        return relearning_check_of(measured)

    # -- keeping ---------------------------------------------------------------------------
    def _keep_best(self, model, step: int) -> None:
        import torch

        from core.training.state import trainable_weights

        path = self.run.points_dir / BEST_WEIGHTS
        tmp = path.with_suffix(".tmp")
        torch.save(trainable_weights(model), tmp)
        tmp.replace(path)
        self.state.best_step = step

    def best_weights(self) -> dict | None:
        import torch

        path = self.run.points_dir / BEST_WEIGHTS
        return torch.load(path, map_location="cpu") if path.exists() else None

    def _save_state(self, point) -> None:
        state = point.capture_state()
        state.extra = {"monitor": asdict(self.state)}
        state.save(self.run.state_dir)
        self.reporter.state_saved(self.run.root, point.step)

    @staticmethod
    def restore(extra: dict) -> MonitorState:
        return MonitorState(**extra.get("monitor", {}))


def _at(nll: dict[int, float], ceilings: list[float | None], index: int) -> bool:
    """Whether a part of an answer is at or past its ceiling (or has none to reach)."""
    value, ceiling = nll.get(index), ceilings[index]
    return value is None or ceiling is None or value >= ceiling


def _share_at(nll: dict[int, float], ceilings: list[float | None]) -> float:
    """The share of the measured answers at or past their ceilings."""
    return float(np.mean([v >= ceilings[i] for i, v in nll.items()]))


def matched_ceilings(
    forget_nll: dict[int, float], holdout_nll: np.ndarray, n_forget: int, shift: float = 0.0
) -> list[float | None]:
    """Per forget example, the holdout's per-token NLL at the example's rank among the
    forget answers: the k-th likeliest forget answer is pushed until it is as unlikely as
    the k-th likeliest unseen answer, so the forget set's likelihoods are moved onto the
    holdout's (a loss attack then cannot tell them apart) and no further. Quantiles
    (linear interpolation) of the holdout sample, at the forget ranks' midpoints, moved
    ``shift`` towards the less likely end (``hyperparameters.match_shift``)."""
    ceilings: list[float | None] = [None] * n_forget
    order = sorted(forget_nll, key=forget_nll.__getitem__)
    if not order or not len(holdout_nll):
        return ceilings
    levels = np.minimum((np.arange(len(order)) + 0.5) / len(order) + shift, 1.0)
    for index, value in zip(order, np.quantile(np.asarray(holdout_nll, float), levels)):
        ceilings[index] = float(value)
    return ceilings


def steer_sam_rho(
    rho: float,
    base: float,
    *,
    utility_ratio: float | None,
    utility_floor: float,
    relearning,
) -> tuple[float, str | None]:
    """The sharpness-aware radius after a verdict probe, and why it moved. A larger
    radius flattens the forgotten state faster (a relearning attack climbs back less) and
    costs utility; so a failed utility check lowers it (the relearning check then did not
    run), a failed relearning check raises it, each by ``SAM_STEER_FACTOR``, within
    ``SAM_STEER_RANGE`` x ``base``."""
    low, high = (base * bound for bound in SAM_STEER_RANGE)
    if utility_ratio is not None and utility_ratio < utility_floor:
        after = max(rho / SAM_STEER_FACTOR, low)
        why = f"utility {utility_ratio:.3g}x, below the floor {utility_floor:g}x"
    elif relearning is not None and relearning.passed is False:
        after = min(rho * SAM_STEER_FACTOR, high)
        why = f"the relearning check failed ({relearning.value:.3g}x the holdout's)"
    else:
        return rho, None
    after = round(after, 6)
    return (after, why) if after != rho else (rho, None)


def _head(records, n: int):
    from core.evaluation.probe import sample_sets

    return sample_sets(ProbeSets(forget=records), n).forget


def _median(values) -> float | None:
    if values is None:
        return None
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _value(verdict: Verdict, name: str) -> float | None:
    check = verdict.check(name)
    value = None if check is None else check.value
    return None if value is None or not math.isfinite(value) else value
